/*
 * PixArt through the C ABI v2: a cached denoise, then a batched generate.
 *
 *   cargo build --release
 *   cc -I include examples/c/denoise.c -L target/release -lecad_native -o denoise
 *   LD_LIBRARY_PATH=target/release ./denoise [MODEL_DIR [SCHEDULE]]
 *
 * With no MODEL_DIR it opens the embedded demo pipeline (random weights: the results are noise)
 * and uses ECAD's FORA heuristic (recompute everything every 3 steps); SCHEDULE may be a JSON
 * file, a built-in schedule name or a heuristic name. It encodes a prompt, runs a cached
 * denoise from seeded noise with a progress callback, writes the final latents as raw
 * little-endian float32 to ./ecad_latents.f32, then generates 2 prompts x 2 seeds in one call
 * and writes the first image to ./ecad_image.ppm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ecad.h"

static int fail(const char *what, EcadStatus s) {
    fprintf(stderr, "%s failed (%s): %s\n", what, ecad_status_name(s), ecad_last_error());
    return 1;
}

/* A small deterministic generator (uniform noise is enough here). */
static float next(unsigned *state) {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return ((float)(*state % 20001) / 10000.0f) - 1.0f;
}

/* Progress: counts the calls; never cancels. */
static int on_progress(void *user, const char *stage, uint32_t done, uint32_t total) {
    (void)stage; (void)done; (void)total;
    (*(unsigned *)user)++;
    return 0;
}

static void on_warning(void *user, const char *message) {
    (void)user;
    printf("warning: %s\n", message);
}

int main(int argc, char **argv) {
    printf("ecad-native %s, C ABI %u\n", ecad_version(), ecad_abi_version());
    EcadEngineParams ep;
    memset(&ep, 0, sizeof ep);
    ep.struct_size = sizeof ep;
    ep.model_dir = argc > 1 ? argv[1] : NULL; /* NULL: the demo */
    ep.device = "cpu";
    EcadEngine *engine = NULL;
    EcadStatus s = ecad_engine_open(&ep, &engine);
    if (s != ECAD_OK) return fail("ecad_engine_open", s);

    EcadEngineInfo info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if ((s = ecad_engine_get_info(engine, &info)) != ECAD_OK) return fail("ecad_engine_get_info", s);
    if (info.family != ECAD_FAMILY_PIXART) { fprintf(stderr, "not a PixArt model\n"); return 1; }
    const uint32_t steps = 20, batch = 1;
    const uint32_t height = info.sample_size * info.vae_scale_factor, width = height;
    const uint32_t h = info.sample_size, w = info.sample_size;
    uint32_t text_len = info.has_pipeline ? info.text_len : 16; /* transformer only: random embeddings */

    EcadSchedule *sched = NULL;
    s = ecad_schedule_resolve(engine, argc > 2 ? argv[2] : "fora:3", steps, &sched);
    if (s != ECAD_OK) { ecad_engine_destroy(engine); return fail("ecad_schedule_resolve", s); }

    size_t lat_n = (size_t)batch * info.latent_channels * h * w;
    size_t emb_n = (size_t)batch * text_len * info.text_dim;
    float *latents = malloc(lat_n * sizeof(float)), *out = malloc(lat_n * sizeof(float));
    float *emb = malloc(emb_n * sizeof(float)), *neg = malloc(emb_n * sizeof(float));
    float *mask = malloc(batch * text_len * sizeof(float)), *nmask = malloc(batch * text_len * sizeof(float));
    unsigned st = 12345, calls = 0;
    for (size_t i = 0; i < lat_n; i++) latents[i] = next(&st);
    EcadCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.progress = on_progress;
    cb.warning = on_warning;
    cb.user = &calls;
    if (info.has_pipeline) {
        if ((s = ecad_engine_encode_prompt(engine, "a red fox in the snow, studio light", emb, emb_n, mask,
                                           text_len, NULL, 0, &cb)) != ECAD_OK ||
            (s = ecad_engine_encode_prompt(engine, "", neg, emb_n, nmask, text_len, NULL, 0, &cb)) != ECAD_OK) {
            ecad_schedule_destroy(sched);
            ecad_engine_destroy(engine);
            return fail("ecad_engine_encode_prompt", s);
        }
    } else {
        for (size_t i = 0; i < emb_n; i++) { emb[i] = next(&st); neg[i] = next(&st); }
        for (uint32_t i = 0; i < text_len; i++) { mask[i] = i < 7 ? 1.0f : 0.0f; nmask[i] = i == 0 ? 1.0f : 0.0f; }
    }

    EcadDenoiseRequest r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    r.batch = batch; r.height = height; r.width = width; r.text_len = text_len;
    r.steps = steps; r.guidance = 4.5f;
    r.latents = latents; r.latents_len = lat_n;
    r.prompt_embeds = emb; r.prompt_embeds_len = emb_n;
    r.prompt_mask = mask; r.prompt_mask_len = batch * text_len;
    r.negative_embeds = neg; r.negative_embeds_len = emb_n;
    r.negative_mask = nmask; r.negative_mask_len = batch * text_len;
    r.out_latents = out; r.out_latents_len = lat_n;

    int rc = 0;
    s = ecad_engine_denoise(engine, sched, &r, &cb);
    if (s != ECAD_OK) {
        rc = fail("ecad_engine_denoise", s);
    } else {
        double sum = 0;
        for (size_t i = 0; i < lat_n; i++) sum += out[i];
        FILE *f = fopen("ecad_latents.f32", "wb");
        if (!f || fwrite(out, sizeof(float), lat_n, f) != lat_n) { perror("ecad_latents.f32"); rc = 1; }
        if (f) fclose(f);
        printf("denoised %zu latents in %u steps (%u blocks, %u progress calls), checksum %.6f -> ecad_latents.f32\n",
               lat_n, steps, info.blocks, calls, sum);
        if (calls < steps) { fprintf(stderr, "expected at least %u progress calls\n", steps); rc = 1; }
    }
    if (rc == 0 && info.has_pipeline) {
        const char *prompts[] = {"a red fox in the snow, studio light", "a lighthouse at dusk"};
        const uint32_t num_prompts = 2, per_prompt = 2;
        uint32_t gh = 0, gw = 0;
        if ((s = ecad_engine_plan_size(engine, height, width, 0, &gh, &gw)) != ECAD_OK) {
            rc = fail("ecad_engine_plan_size", s);
        } else {
            size_t one = (size_t)gh * gw * 3, total = one * num_prompts * per_prompt;
            unsigned char *rgb = malloc(total);
            EcadGenerateRequest g;
            memset(&g, 0, sizeof g);
            g.struct_size = sizeof g;
            g.prompts = prompts; g.num_prompts = num_prompts; g.batch = per_prompt;
            g.height = height; g.width = width; g.steps = steps; g.guidance = 4.5f; g.seed = 7;
            g.out_rgb = rgb; g.out_rgb_len = total;
            calls = 0;
            s = ecad_engine_generate(engine, sched, &g, &cb);
            if (s != ECAD_OK) {
                rc = fail("ecad_engine_generate", s);
            } else {
                FILE *f = fopen("ecad_image.ppm", "wb");
                if (!f) { perror("ecad_image.ppm"); rc = 1; }
                else { fprintf(f, "P6\n%u %u\n255\n", gw, gh); fwrite(rgb, 1, one, f); fclose(f); }
                int differ = memcmp(rgb, rgb + one, one) != 0; /* seeds 7 and 8 */
                printf("generated %u x %u images of %ux%u (%u progress calls, seeds differ: %d) -> ecad_image.ppm\n",
                       num_prompts, per_prompt, gw, gh, calls, differ);
                if (!differ) rc = 1;
            }
            free(rgb);
        }
    }
    size_t need = 0;
    ecad_engine_take_warnings(engine, NULL, 0, &need);
    if (need > 1) {
        char *wb = malloc(need);
        if (ecad_engine_take_warnings(engine, wb, need, NULL) == ECAD_OK) printf("engine warnings: %s\n", wb);
        free(wb);
    }
    ecad_schedule_destroy(sched);
    ecad_engine_destroy(engine);
    free(latents); free(out); free(emb); free(neg); free(mask); free(nmask);
    return rc;
}
