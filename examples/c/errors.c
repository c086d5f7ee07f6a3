/*
 * Error paths of the C ABI: every bad call must return its status code (never crash) and
 * leave a message in ecad_last_error(). Run under valgrind or AddressSanitizer by the tests.
 * The first part drives the version-1 calls, the second the version-2 ones.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ecad.h"

static int failures = 0;
#define EXPECT(call, code)                                                                   \
    do {                                                                                     \
        EcadStatus s_ = (call);                                                              \
        if (s_ != (code)) {                                                                  \
            fprintf(stderr, "line %d: %s returned %d, expected %d (%s)\n", __LINE__, #call,  \
                    (int)s_, (int)(code), ecad_last_error());                                \
            failures++;                                                                      \
        } else if ((code) != ECAD_OK && ecad_last_error()[0] == '\0') {                      \
            fprintf(stderr, "line %d: no error message\n", __LINE__);                        \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

static int cancel_now(void *user, const char *stage, uint32_t done, uint32_t total) {
    (void)user; (void)stage; (void)total;
    return done >= 1;
}

/* The version-2 calls: versioned structs, callbacks, stale handles, both kinds of buffers. */
static int v2_error_paths(void) {
    int before = failures;
    EcadEngine *e = NULL;
    if (ecad_abi_version() != 2) { fprintf(stderr, "abi version %u\n", ecad_abi_version()); failures++; }
    if (strcmp(ecad_status_name(ECAD_CANCELLED), "ECAD_CANCELLED") != 0 ||
        strcmp(ecad_status_name(999), "ECAD_UNKNOWN") != 0) { fprintf(stderr, "status names\n"); failures++; }

    /* Engine parameters: NULLs, struct sizes, bad values. */
    EcadEngineParams ep;
    memset(&ep, 0, sizeof ep);
    ep.struct_size = sizeof ep;
    EXPECT(ecad_engine_open(NULL, &e), ECAD_NULL_POINTER);
    EXPECT(ecad_engine_open(&ep, NULL), ECAD_NULL_POINTER);
    ep.struct_size = 4;
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT);
    ep.struct_size = sizeof ep;
    ep.arch = "no-such-arch";
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT);
    ep.model_dir = "/nonexistent/model";
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT); /* both set */
    ep.arch = NULL;
    EXPECT(ecad_engine_open(&ep, &e), ECAD_MODEL_ERROR); /* no such folder */
    ep.model_dir = NULL;
    ep.device = "tpu";
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT);
    ep.device = "cpu"; ep.dtype = "f16";
    EXPECT(ecad_engine_open(&ep, &e), ECAD_UNSUPPORTED);
    ep.dtype = "f64";
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT);
    ep.dtype = NULL; ep.threads = 1000000;
    EXPECT(ecad_engine_open(&ep, &e), ECAD_INVALID_ARGUMENT);
    if (e != NULL) { fprintf(stderr, "out handle written on failure\n"); failures++; }
    /* A newer caller's larger struct is accepted (its tail ignored). */
    struct { EcadEngineParams p; char tail[64]; } big;
    memset(&big, 0x7f, sizeof big);
    memset(&big.p, 0, sizeof big.p);
    big.p.struct_size = sizeof big; big.p.device = "cpu"; big.p.threads = 1;
    EXPECT(ecad_engine_open(&big.p, &e), ECAD_OK);

    /* Info: struct sizes. */
    EcadEngineInfo info;
    memset(&info, 0, sizeof info);
    EXPECT(ecad_engine_get_info(e, &info), ECAD_INVALID_ARGUMENT); /* struct_size 0 */
    if (info.family != 0) { fprintf(stderr, "info written on failure\n"); failures++; }
    EXPECT(ecad_engine_get_info(e, NULL), ECAD_NULL_POINTER);
    info.struct_size = sizeof info;
    EXPECT(ecad_engine_get_info(e, &info), ECAD_OK);
    if (info.family != ECAD_FAMILY_PIXART || info.packed || !info.has_pipeline || info.text_len == 0 ||
        info.struct_size != sizeof info) {
        fprintf(stderr, "demo info: family %u packed %u pipeline %u text_len %u\n", info.family, info.packed,
                info.has_pipeline, info.text_len);
        failures++;
    }

    /* Warnings: a size query, then a short buffer. */
    size_t need = 0;
    char small_buf[1] = {'x'};
    EXPECT(ecad_engine_take_warnings(e, NULL, 0, &need), ECAD_OK);
    if (need < 1) { fprintf(stderr, "needed %zu\n", need); failures++; }
    EXPECT(ecad_engine_take_warnings(e, small_buf, sizeof small_buf, &need), need > 1 ? ECAD_BUFFER_SIZE : ECAD_OK);

    /* Schedules: stale handles never reach a newer schedule. */
    EcadSchedule *s1 = NULL, *s2 = NULL;
    uint32_t n = 0;
    EXPECT(ecad_schedule_resolve(e, "nonsense:7", 10, &s1), ECAD_SCHEDULE_ERROR);
    EXPECT(ecad_schedule_resolve(e, "/nonexistent/schedule.json", 10, &s1), ECAD_IO_ERROR);
    EXPECT(ecad_schedule_resolve(e, "fora:2", 4, &s1), ECAD_OK);
    EXPECT(ecad_schedule_destroy(s1), ECAD_OK);
    EXPECT(ecad_schedule_resolve(e, "fora:2", 4, &s2), ECAD_OK);
    EXPECT(ecad_schedule_destroy(s1), ECAD_INVALID_HANDLE);
    EXPECT(ecad_schedule_steps(s1, &n), ECAD_INVALID_HANDLE);
    EXPECT(ecad_schedule_steps(s2, &n), ECAD_OK);
    if (n != 4) { fprintf(stderr, "steps %u\n", n); failures++; }
    EXPECT(ecad_engine_destroy((EcadEngine *)s2), ECAD_INVALID_HANDLE);
    /* A built-in schedule name (as the CLI's --schedule): it keeps its own 20 steps. */
    EcadSchedule *s3 = NULL;
    EXPECT(ecad_schedule_resolve(e, "pixart-alpha-256/fast", 4, &s3), ECAD_OK);
    EXPECT(ecad_schedule_steps(s3, &n), ECAD_OK);
    if (n != 20) { fprintf(stderr, "built-in steps %u\n", n); failures++; }
    EXPECT(ecad_schedule_destroy(s3), ECAD_OK);
    EXPECT(ecad_schedule_resolve(e, "pixart-alpha-256/fst", 20, &s3), ECAD_SCHEDULE_ERROR);

    /* Denoise: sizes, family-specific inputs, cancellation. */
    const uint32_t L = 3, hw = 16; /* 16 px = 2x2 latents */
    size_t lat_n = (size_t)info.latent_channels * 2 * 2, emb_n = (size_t)L * info.text_dim;
    float *lat = calloc(lat_n, 4), *emb = calloc(emb_n, 4), *out = calloc(lat_n, 4), pooled[4] = {0};
    EcadDenoiseRequest r;
    memset(&r, 0, sizeof r);
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_INVALID_ARGUMENT); /* struct_size 0 */
    r.struct_size = sizeof r;
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_INVALID_ARGUMENT); /* zero sizes */
    r.batch = 1; r.height = hw; r.width = hw; r.text_len = L; r.steps = 4; r.guidance = 1.0f;
    r.latents = lat; r.latents_len = lat_n; r.prompt_embeds = emb; r.prompt_embeds_len = emb_n;
    r.out_latents = out; r.out_latents_len = lat_n;
    r.height = 12;
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_INVALID_ARGUMENT); /* not a multiple of 8 */
    r.height = hw;
    r.latents_len = lat_n - 1;
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_BUFFER_SIZE);
    r.latents_len = lat_n;
    r.pooled_embeds = pooled; r.pooled_embeds_len = 4;
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_INVALID_ARGUMENT); /* PixArt takes none */
    r.pooled_embeds = NULL; r.pooled_embeds_len = 0;
    r.steps = 6;
    EXPECT(ecad_engine_denoise(e, s2, &r, NULL), ECAD_SCHEDULE_ERROR); /* the schedule has 4 */
    r.steps = 4;
    EcadCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.progress = cancel_now;
    EXPECT(ecad_engine_denoise(e, s2, &r, &cb), ECAD_INVALID_ARGUMENT); /* callbacks struct_size 0 */
    cb.struct_size = sizeof cb;
    for (size_t i = 0; i < lat_n; i++) out[i] = 42.0f;
    EXPECT(ecad_engine_denoise(e, s2, &r, &cb), ECAD_CANCELLED);
    for (size_t i = 0; i < lat_n; i++)
        if (out[i] != 42.0f) { fprintf(stderr, "output written by a cancelled run\n"); failures++; break; }
    EXPECT(ecad_engine_denoise(e, s2, &r, NULL), ECAD_OK);

    /* Encode: sizes; PixArt needs no pooled buffer. */
    float tiny[2];
    EXPECT(ecad_engine_encode_prompt(e, "a cat", tiny, 2, NULL, 0, NULL, 0, NULL), ECAD_BUFFER_SIZE);
    EXPECT(ecad_engine_encode_prompt(e, NULL, tiny, 2, NULL, 0, NULL, 0, NULL), ECAD_NULL_POINTER);

    /* Generate: prompts, buffer sizes. */
    const char *prompts[] = {"a cat", "a dog"};
    unsigned char rgb[12];
    EcadGenerateRequest g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    g.height = 64; g.width = 64; g.steps = 2; g.guidance = 1.0f; g.out_rgb = rgb; g.out_rgb_len = sizeof rgb;
    EXPECT(ecad_engine_generate(e, NULL, &g, NULL), ECAD_INVALID_ARGUMENT); /* no prompts */
    g.num_prompts = 2;
    EXPECT(ecad_engine_generate(e, NULL, &g, NULL), ECAD_NULL_POINTER);
    g.prompts = prompts; g.batch = 3;
    EXPECT(ecad_engine_generate(e, NULL, &g, NULL), ECAD_BUFFER_SIZE);
    g.width = 100;
    EXPECT(ecad_engine_generate(e, NULL, &g, NULL), ECAD_INVALID_ARGUMENT);
    uint32_t ph = 0, pw = 0;
    EXPECT(ecad_engine_plan_size(e, 64, 64, 0, &ph, NULL), ECAD_NULL_POINTER);
    EXPECT(ecad_engine_plan_size(e, 64, 64, 0, &ph, &pw), ECAD_OK);

    /* Stale engine handles. */
    EXPECT(ecad_schedule_destroy(s2), ECAD_OK);
    EXPECT(ecad_engine_destroy(e), ECAD_OK);
    EXPECT(ecad_engine_destroy(e), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_get_info(e, &info), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_denoise(e, NULL, &r, NULL), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_generate(e, NULL, &g, NULL), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_take_warnings(e, NULL, 0, &need), ECAD_INVALID_HANDLE);
    free(lat); free(emb); free(out);
    return failures != before;
}

int main(void) {
    EcadEngine *e = NULL;
    EcadSchedule *sc = NULL;
    float buf[4] = {0};

    /* Null pointers and bad strings. */
    EXPECT(ecad_engine_create(NULL, NULL, NULL), ECAD_NULL_POINTER);
    EXPECT(ecad_engine_create("/nonexistent/model", NULL, &e), ECAD_MODEL_ERROR); /* as in v1 */
    EXPECT(ecad_engine_create(NULL, "tpu", &e), ECAD_INVALID_ARGUMENT);
    EXPECT(ecad_engine_create(NULL, "cuda", &e), ECAD_DEVICE_UNAVAILABLE);
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
    EXPECT(ecad_engine_create(bad_utf8, NULL, &e), ECAD_INVALID_UTF8);
    EXPECT(ecad_schedule_from_json(NULL, &sc), ECAD_NULL_POINTER);
    EXPECT(ecad_schedule_from_json("{ not json", &sc), ECAD_SCHEDULE_ERROR);
    EXPECT(ecad_schedule_from_file("/nonexistent.json", &sc), ECAD_IO_ERROR); /* v1: SCHEDULE_ERROR */

    /* A real engine, then wrong sizes and a bad schedule. */
    EXPECT(ecad_engine_create(NULL, "cpu", &e), ECAD_OK);
    uint32_t ch = 0, cap = 0, blocks = 0, ss = 0, tl = 0;
    EXPECT(ecad_engine_info(e, &ch, &cap, &blocks, &ss, &tl), ECAD_OK);
    EXPECT(ecad_engine_info(e, NULL, NULL, NULL, NULL, NULL), ECAD_OK);

    /* Prompt encoding and generate: NULLs, wrong sizes, bad UTF-8, bad image sizes. */
    float small[8];
    EXPECT(ecad_encode_prompt(e, NULL, small, 8, small, 8), ECAD_NULL_POINTER);
    EXPECT(ecad_encode_prompt(e, "a cat", small, 8, small, 8), ECAD_BUFFER_SIZE);
    EXPECT(ecad_encode_prompt(e, bad_utf8, small, 8, small, 8), ECAD_INVALID_UTF8);
    EcadGenerateParams g;
    memset(&g, 0, sizeof g);
    EXPECT(ecad_generate(e, NULL, NULL), ECAD_NULL_POINTER);
    EXPECT(ecad_generate(e, NULL, &g), ECAD_NULL_POINTER); /* no prompt */
    unsigned char rgb[12];
    g.prompt = "a cat"; g.steps = 2; g.guidance = 1.0f; g.out_rgb = rgb; g.out_rgb_len = sizeof rgb;
    g.width = 100; g.height = 64; /* not a multiple of 8 */
    EXPECT(ecad_generate(e, NULL, &g), ECAD_INVALID_ARGUMENT);
    g.width = 64;
    EXPECT(ecad_generate(e, NULL, &g), ECAD_BUFFER_SIZE);
    EXPECT(ecad_schedule_heuristic(e, "nonsense:7", 20, &sc), ECAD_SCHEDULE_ERROR);
    EXPECT(ecad_schedule_heuristic(e, "fora:3", 10, &sc), ECAD_OK);

    EcadDenoiseParams p;
    memset(&p, 0, sizeof p);
    EXPECT(ecad_denoise(e, NULL, NULL), ECAD_NULL_POINTER);
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_INVALID_ARGUMENT); /* zero sizes */
    p.batch = 1; p.latent_height = 2; p.latent_width = 2; p.text_len = 1; p.steps = 20; p.guidance = 1.0f;
    p.latents = buf; p.latents_len = 4; /* needs ch*2*2 = 16 */
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_BUFFER_SIZE);
    float lat[16] = {0}, emb[64] = {0}, out[16] = {0};
    p.latents = lat; p.latents_len = 16;
    p.prompt_embeds = emb; p.prompt_embeds_len = cap; /* exactly 1 x 1 x cap */
    p.out_latents = out; p.out_latents_len = 15;
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_BUFFER_SIZE);
    p.out_latents_len = 16;
    p.steps = 1;
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_INVALID_ARGUMENT);
    p.steps = 20; /* the schedule has 10 steps */
    EXPECT(ecad_denoise(e, sc, &p), ECAD_SCHEDULE_ERROR);
    p.guidance = 4.5f; /* CFG needs negative embeddings */
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_NULL_POINTER);
    p.guidance = 1.0f; p.steps = 10;
    EXPECT(ecad_denoise(e, sc, &p), ECAD_OK);

    /* Use after destroy, double destroy, foreign pointers. */
    EXPECT(ecad_schedule_destroy(sc), ECAD_OK);
    EXPECT(ecad_schedule_destroy(sc), ECAD_INVALID_HANDLE);
    EXPECT(ecad_denoise(e, sc, &p), ECAD_INVALID_HANDLE);
    EXPECT(ecad_schedule_destroy((EcadSchedule *)e), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_destroy(e), ECAD_OK);
    EXPECT(ecad_engine_destroy(e), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_info(e, &ch, NULL, NULL, NULL, NULL), ECAD_INVALID_HANDLE);
    EXPECT(ecad_generate(e, NULL, &g), ECAD_INVALID_HANDLE);
    EXPECT(ecad_denoise(e, NULL, &p), ECAD_INVALID_HANDLE);
    EXPECT(ecad_engine_destroy(NULL), ECAD_INVALID_HANDLE);

    v2_error_paths();

    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all error paths returned their codes (ecad-native %s)\n", ecad_version());
    return 0;
}
