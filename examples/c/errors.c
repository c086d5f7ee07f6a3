/*
 * Error paths of the C ABI: every bad call must return its status code (never crash) and
 * leave a message in ecad_last_error(). Run under valgrind or AddressSanitizer by the tests.
 */
#include <stdio.h>
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

int main(void) {
    EcadEngine *e = NULL;
    EcadSchedule *sc = NULL;
    float buf[4] = {0};

    /* Null pointers and bad strings. */
    EXPECT(ecad_engine_create(NULL, NULL, NULL), ECAD_NULL_POINTER);
    EXPECT(ecad_engine_create("/nonexistent/model", NULL, &e), ECAD_MODEL_ERROR);
    EXPECT(ecad_engine_create(NULL, "tpu", &e), ECAD_INVALID_ARGUMENT);
    EXPECT(ecad_engine_create(NULL, "cuda", &e), ECAD_DEVICE_UNAVAILABLE);
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
    EXPECT(ecad_engine_create(bad_utf8, NULL, &e), ECAD_INVALID_UTF8);
    EXPECT(ecad_schedule_from_json(NULL, &sc), ECAD_NULL_POINTER);
    EXPECT(ecad_schedule_from_json("{ not json", &sc), ECAD_SCHEDULE_ERROR);
    EXPECT(ecad_schedule_from_file("/nonexistent.json", &sc), ECAD_SCHEDULE_ERROR);

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

    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all error paths returned their codes (ecad-native %s)\n", ecad_version());
    return 0;
}
