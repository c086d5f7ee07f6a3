/*
 * A cached denoise through the C ABI.
 *
 *   cargo build --release
 *   cc -I include examples/c/denoise.c -L target/release -lecad_native -o denoise
 *   LD_LIBRARY_PATH=target/release ./denoise [MODEL_DIR [SCHEDULE.json]]
 *
 * With no MODEL_DIR it uses the embedded demo pipeline (random weights: the results are noise)
 * and ECAD's FORA heuristic (recompute everything every 3 steps). It encodes a prompt, runs a
 * cached denoise from seeded noise, writes the final latents as raw little-endian float32 to
 * ./ecad_latents.f32, then generates an image through ecad_generate into ./ecad_image.ppm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ecad.h"

static int fail(const char *what, EcadStatus s) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)s, ecad_last_error());
    return 1;
}

/* A small deterministic generator (xorshift + Box-Muller-free uniform noise is enough here). */
static float next(unsigned *state) {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return ((float)(*state % 20001) / 10000.0f) - 1.0f;
}

int main(int argc, char **argv) {
    const char *model = argc > 1 ? argv[1] : NULL;
    EcadEngine *engine = NULL;
    EcadStatus s = ecad_engine_create(model, "cpu", &engine);
    if (s != ECAD_OK) return fail("ecad_engine_create", s);

    uint32_t channels = 0, caption = 0, blocks = 0, sample = 0, text_len = 0;
    ecad_engine_info(engine, &channels, &caption, &blocks, &sample, &text_len);
    const uint32_t steps = 20, batch = 1;
    int full_pipeline = text_len > 0;
    if (!full_pipeline) text_len = 16; /* transformer-only engine: random embeddings */

    EcadSchedule *sched = NULL;
    s = argc > 2 ? ecad_schedule_from_file(argv[2], &sched)
                 : ecad_schedule_heuristic(engine, "fora:3", steps, &sched);
    if (s != ECAD_OK) { ecad_engine_destroy(engine); return fail("loading the schedule", s); }

    size_t lat_n = (size_t)batch * channels * sample * sample;
    size_t emb_n = (size_t)batch * text_len * caption;
    float *latents = malloc(lat_n * sizeof(float)), *out = malloc(lat_n * sizeof(float));
    float *emb = malloc(emb_n * sizeof(float)), *neg = malloc(emb_n * sizeof(float));
    float *mask = malloc(batch * text_len * sizeof(float)), *nmask = malloc(batch * text_len * sizeof(float));
    unsigned st = 12345;
    for (size_t i = 0; i < lat_n; i++) latents[i] = next(&st);
    if (full_pipeline) {
        if ((s = ecad_encode_prompt(engine, "a red fox in the snow, studio light", emb, emb_n, mask, text_len)) != ECAD_OK ||
            (s = ecad_encode_prompt(engine, "", neg, emb_n, nmask, text_len)) != ECAD_OK) {
            ecad_schedule_destroy(sched);
            ecad_engine_destroy(engine);
            return fail("ecad_encode_prompt", s);
        }
    } else {
        for (size_t i = 0; i < emb_n; i++) { emb[i] = next(&st); neg[i] = next(&st); }
        for (uint32_t i = 0; i < text_len; i++) { mask[i] = i < 7 ? 1.0f : 0.0f; nmask[i] = i == 0 ? 1.0f : 0.0f; }
    }

    EcadDenoiseParams p;
    memset(&p, 0, sizeof p);
    p.batch = batch; p.latent_height = sample; p.latent_width = sample; p.text_len = text_len;
    p.steps = steps; p.guidance = 4.5f;
    p.latents = latents; p.latents_len = lat_n;
    p.prompt_embeds = emb; p.prompt_embeds_len = emb_n;
    p.prompt_mask = mask; p.prompt_mask_len = batch * text_len;
    p.negative_embeds = neg; p.negative_embeds_len = emb_n;
    p.negative_mask = nmask; p.negative_mask_len = batch * text_len;
    p.out_latents = out; p.out_latents_len = lat_n;

    int rc = 0;
    s = ecad_denoise(engine, sched, &p);
    if (s != ECAD_OK) {
        rc = fail("ecad_denoise", s);
    } else {
        double sum = 0;
        for (size_t i = 0; i < lat_n; i++) sum += out[i];
        FILE *f = fopen("ecad_latents.f32", "wb");
        if (!f || fwrite(out, sizeof(float), lat_n, f) != lat_n) { perror("ecad_latents.f32"); rc = 1; }
        if (f) fclose(f);
        printf("ecad-native %s: denoised %zu latents in %u steps (%u blocks), checksum %.6f -> ecad_latents.f32\n",
               ecad_version(), lat_n, steps, blocks, sum);
    }
    if (rc == 0 && full_pipeline) {
        const uint32_t w = sample * 8, h = sample * 8;
        unsigned char *rgb = malloc((size_t)w * h * 3);
        EcadGenerateParams g;
        memset(&g, 0, sizeof g);
        g.prompt = "a red fox in the snow, studio light"; g.width = w; g.height = h;
        g.steps = steps; g.guidance = 4.5f; g.seed = 7; g.out_rgb = rgb; g.out_rgb_len = (size_t)w * h * 3;
        s = ecad_generate(engine, sched, &g);
        if (s != ECAD_OK) {
            rc = fail("ecad_generate", s);
        } else {
            FILE *f = fopen("ecad_image.ppm", "wb");
            if (!f) { perror("ecad_image.ppm"); rc = 1; }
            else { fprintf(f, "P6\n%u %u\n255\n", w, h); fwrite(rgb, 1, (size_t)w * h * 3, f); fclose(f); }
            printf("generated a %ux%u image -> ecad_image.ppm\n", w, h);
        }
        free(rgb);
    }
    ecad_schedule_destroy(sched);
    ecad_engine_destroy(engine);
    free(latents); free(out); free(emb); free(neg); free(mask); free(nmask);
    return rc;
}
