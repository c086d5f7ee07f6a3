/*
 * FLUX through the C ABI v2: a cached denoise on packed latents with T5 and pooled CLIP
 * embeddings, then the same run cancelled from its progress callback.
 *
 *   cargo build --release
 *   cc -I include examples/c/flux_denoise.c -L target/release -lecad_native -o flux_denoise
 *   LD_LIBRARY_PATH=target/release ./flux_denoise [MODEL_DIR] [SIZE] [STEPS]
 *
 * With no MODEL_DIR (or "-") it opens the built-in `flux-narrow` architecture (FLUX.1-dev's
 * depth and text widths with 4 heads, random weights: the results are noise) on the CPU, at
 * 128x128 pixels and 2 steps, with random embeddings. It writes the final packed latents as raw
 * little-endian float32 to ./ecad_flux_latents.f32.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ecad.h"

static int fail(const char *what, EcadStatus s) {
    fprintf(stderr, "%s failed (%s): %s\n", what, ecad_status_name(s), ecad_last_error());
    return 1;
}

static float next(unsigned *state) {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return ((float)(*state % 20001) / 10000.0f) - 1.0f;
}

struct progress {
    unsigned calls;
    uint32_t cancel_at; /* 0: never */
    uint32_t last_done, last_total;
};

static int on_progress(void *user, const char *stage, uint32_t done, uint32_t total) {
    struct progress *p = user;
    (void)stage;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
    return p->cancel_at && done >= p->cancel_at;
}

int main(int argc, char **argv) {
    const char *model = argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL;
    const uint32_t size = argc > 2 ? (uint32_t)atoi(argv[2]) : 128;
    const uint32_t steps = argc > 3 ? (uint32_t)atoi(argv[3]) : 2;
    EcadEngineParams ep;
    memset(&ep, 0, sizeof ep);
    ep.struct_size = sizeof ep;
    ep.model_dir = model;
    ep.arch = model ? NULL : "flux-narrow";
    ep.device = "cpu";
    EcadEngine *engine = NULL;
    EcadStatus s = ecad_engine_open(&ep, &engine);
    if (s != ECAD_OK) return fail("ecad_engine_open", s);

    EcadEngineInfo info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if ((s = ecad_engine_get_info(engine, &info)) != ECAD_OK) return fail("ecad_engine_get_info", s);
    if (info.family != ECAD_FAMILY_FLUX || !info.packed || info.pooled_dim == 0) {
        fprintf(stderr, "not a FLUX model (family %u)\n", info.family);
        return 1;
    }
    printf("FLUX: %u double + %u single blocks, latent channels %u, text %u, pooled %u, default guidance %.1f\n",
           info.blocks, info.single_blocks, info.latent_channels, info.text_dim, info.pooled_dim,
           info.default_guidance);

    /* Packed latents [B, (h/2)(w/2), 4C] with h = w = size / vae_scale_factor. */
    const uint32_t batch = 1, text_len = 8;
    const uint32_t h = size / info.vae_scale_factor, w = h;
    size_t lat_n = (size_t)batch * (h / 2) * (w / 2) * 4 * info.latent_channels;
    size_t emb_n = (size_t)batch * text_len * info.text_dim, pooled_n = (size_t)batch * info.pooled_dim;
    float *latents = malloc(lat_n * sizeof(float)), *out = malloc(lat_n * sizeof(float));
    float *emb = malloc(emb_n * sizeof(float)), *pooled = malloc(pooled_n * sizeof(float));
    unsigned st = 777;
    for (size_t i = 0; i < lat_n; i++) latents[i] = next(&st);
    for (size_t i = 0; i < emb_n; i++) emb[i] = 0.1f * next(&st);
    for (size_t i = 0; i < pooled_n; i++) pooled[i] = 0.1f * next(&st);

    EcadSchedule *sched = NULL;
    if ((s = ecad_schedule_heuristic(engine, "fora:2", steps, &sched)) != ECAD_OK) return fail("ecad_schedule_heuristic", s);

    EcadDenoiseRequest r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    r.batch = batch; r.height = size; r.width = size; r.text_len = text_len; r.steps = steps;
    r.guidance = 0.0f; /* the model's default */
    r.latents = latents; r.latents_len = lat_n;
    r.prompt_embeds = emb; r.prompt_embeds_len = emb_n;
    r.pooled_embeds = pooled; r.pooled_embeds_len = pooled_n;
    r.out_latents = out; r.out_latents_len = lat_n;
    struct progress pr = {0, 0, 0, 0};
    EcadCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.progress = on_progress;
    cb.user = &pr;

    int rc = 0;
    s = ecad_engine_denoise(engine, sched, &r, &cb);
    if (s != ECAD_OK) {
        rc = fail("ecad_engine_denoise", s);
    } else {
        double sum = 0;
        for (size_t i = 0; i < lat_n; i++) sum += out[i];
        FILE *f = fopen("ecad_flux_latents.f32", "wb");
        if (!f || fwrite(out, sizeof(float), lat_n, f) != lat_n) { perror("ecad_flux_latents.f32"); rc = 1; }
        if (f) fclose(f);
        printf("flux denoised %zu packed latents at %ux%u in %u steps (progress %u/%u, %u calls), checksum %.6f\n",
               lat_n, size, size, steps, pr.last_done, pr.last_total, pr.calls, sum);
        if (pr.last_done != steps || pr.last_total != steps) rc = 1;
    }

    /* Cancel after the first step: the run stops there (no second step), returns ECAD_CANCELLED
     * and leaves the output as it was. */
    if (rc == 0) {
        for (size_t i = 0; i < lat_n; i++) out[i] = 42.0f;
        pr.cancel_at = 1;
        pr.last_done = 0;
        s = ecad_engine_denoise(engine, sched, &r, &cb);
        int untouched = 1;
        for (size_t i = 0; i < lat_n; i++) untouched &= out[i] == 42.0f;
        printf("cancelled run: %s, output untouched: %d, stopped after step %u of %u\n",
               ecad_status_name(s), untouched, pr.last_done, steps);
        if (s != ECAD_CANCELLED || !untouched || pr.last_done != 1) rc = 1;
    }
    ecad_schedule_destroy(sched);
    ecad_engine_destroy(engine);
    free(latents); free(out); free(emb); free(pooled);
    return rc;
}
