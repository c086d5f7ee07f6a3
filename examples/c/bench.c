/*
 * Times a cached denoise through the C ABI, for comparison with the Rust API
 * (`ecad-native bench --schedule fora:3`), which uses inputs of the same shapes: 1 prompt,
 * 120 text tokens of which 40 are kept (the negative keeps 1), the model's default latent size.
 *
 *   cc -O2 -I include examples/c/bench.c -L target/release -lecad_native -o c_bench
 *   LD_LIBRARY_PATH=target/release ./c_bench [REPS] [MODEL_DIR]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ecad.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1) reps = 1;
    EcadEngine *e = NULL;
    if (ecad_engine_create(argc > 2 ? argv[2] : NULL, "cpu", &e) != ECAD_OK) {
        fprintf(stderr, "%s\n", ecad_last_error());
        return 1;
    }
    uint32_t ch, cap, blocks, ss;
    ecad_engine_info(e, &ch, &cap, &blocks, &ss, NULL);
    EcadSchedule *sc = NULL;
    ecad_schedule_heuristic(e, "fora:3", 20, &sc);
    const uint32_t L = 120;
    size_t lat_n = (size_t)ch * ss * ss, emb_n = (size_t)L * cap;
    float *lat = calloc(lat_n, 4), *out = calloc(lat_n, 4), *emb = calloc(emb_n, 4), *neg = calloc(emb_n, 4);
    float *m = calloc(L, 4), *nm = calloc(L, 4);
    for (size_t i = 0; i < lat_n; i++) lat[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    for (size_t i = 0; i < emb_n; i++) { emb[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f; neg[i] = -emb[i]; }
    for (uint32_t i = 0; i < L; i++) { m[i] = i < 40; nm[i] = i == 0; }
    EcadDenoiseParams p;
    memset(&p, 0, sizeof p);
    p.batch = 1; p.latent_height = ss; p.latent_width = ss; p.text_len = L; p.steps = 20; p.guidance = 4.5f;
    p.latents = lat; p.latents_len = lat_n; p.prompt_embeds = emb; p.prompt_embeds_len = emb_n;
    p.prompt_mask = m; p.prompt_mask_len = L; p.negative_embeds = neg; p.negative_embeds_len = emb_n;
    p.negative_mask = nm; p.negative_mask_len = L; p.out_latents = out; p.out_latents_len = lat_n;
    double *t = calloc(reps, sizeof(double));
    ecad_denoise(e, sc, &p); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        if (ecad_denoise(e, sc, &p) != ECAD_OK) { fprintf(stderr, "%s\n", ecad_last_error()); return 1; }
        t[r] = now_ms() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    printf("C API cached denoise (fora:3, 20 steps): median %.2f ms over %d runs\n", t[reps / 2], reps);
    ecad_schedule_destroy(sc);
    ecad_engine_destroy(e);
    free(lat); free(out); free(emb); free(neg); free(m); free(nm); free(t);
    return 0;
}
