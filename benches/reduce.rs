//! Criterion micro-benchmark of the runtime policies' skip test: per batch row
//! `(Σ|a − b|, Σ|b|)` ([`Backend::abs_diff_sums`]) against what the policies did before it, two
//! whole-tensor `to_host` copies summed on the host. Shapes: FLUX's image stream at 512 px
//! (1024 tokens × 3072) and at 1024 px (4096 × 3072), batch 2 (a CFG pair); on the CPU the
//! small one only. The CUDA group runs when a CUDA device opens (f32 and bf16 storage); it prints why
//! not otherwise. Each CUDA iteration includes its read-back, so it waits for the device.
//!
//!     cargo bench --bench reduce

use criterion::{criterion_group, criterion_main, Criterion};
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::cuda::{CudaBackend, DType};
use ecad_native::backend::{abs_diff_sums_host, Backend, Tensor};
use ecad_native::models::randn;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `b` and `a = b + 0.05·noise`, as the skip test sees consecutive residuals.
fn pair<B: Backend>(be: &B, shape: &[usize]) -> (Tensor<B>, Tensor<B>) {
    let n = shape.iter().product();
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let b = randn(&mut r, n);
    let a: Vec<f32> = b
        .iter()
        .zip(randn(&mut r, n))
        .map(|(x, e)| x + 0.05 * e)
        .collect();
    (be.upload(a, shape).unwrap(), be.upload(b, shape).unwrap())
}

fn both<B: Backend>(c: &mut Criterion, be: &B, name: &str, shape: &[usize]) {
    let (a, b) = pair(be, shape);
    c.bench_function(&format!("abs_diff_sums/{name} {shape:?} op"), |bn| {
        bn.iter(|| be.abs_diff_sums(&a, &b).unwrap())
    });
    c.bench_function(
        &format!("abs_diff_sums/{name} {shape:?} to_host + host sums"),
        |bn| {
            bn.iter(|| {
                abs_diff_sums_host(&be.to_host(&a).unwrap(), &be.to_host(&b).unwrap(), shape[0])
            })
        },
    );
}

fn benches(c: &mut Criterion) {
    both(c, &CpuBackend::new(), "cpu", &[2, 1024, 3072]);
    for dt in [DType::F32, DType::Bf16] {
        match CudaBackend::with_dtype(0, dt) {
            Ok(be) => {
                let name = be.name();
                both(c, &be, name, &[2, 1024, 3072]);
                both(c, &be, name, &[2, 4096, 3072]);
            }
            Err(e) => {
                println!("abs_diff_sums on CUDA SKIPPED: {e}");
                return;
            }
        }
    }
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(group);
