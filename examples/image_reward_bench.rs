//! The engine side of the ImageReward scorer's CPU comparison (tools/bench/image_reward_cpu.sh):
//! times `ImageReward::score_ids` on the inputs tools/bench/image_reward_torch.py wrote beside the
//! real-sized random model, batched and one image at a time (what the Scorer does on the CPU),
//! and checks the scores against the package's.
//!
//!     cargo run --example image_reward_bench -- DIR [REPS]
//!
//! Prints one JSON line.

use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::models::image_reward::ImageReward;
use ecad_native::weights::read_inputs;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: image_reward_bench DIR [REPS]")?);
    let reps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let be = CpuBackend::new();
    let t0 = Instant::now();
    let model = ImageReward::open(&dir, &be)?;
    let load_s = t0.elapsed().as_secs_f64();
    let io = read_inputs(&dir.join("bench_io.safetensors"))?;
    let px = &io["pixels"];
    let b = px.shape[0];
    let pixels = be.upload(px.data.clone(), &px.shape)?;
    let ids: Vec<u32> = io["input_ids"].data.iter().map(|&v| v as u32).collect();
    let mask = io["attention_mask"].data.clone();
    let l = ids.len() / b;
    let per = 3 * 224 * 224;
    let singles: Vec<_> = (0..b)
        .map(|i| be.upload(px.data[i * per..(i + 1) * per].to_vec(), &[1, 3, 224, 224]))
        .collect::<Result<_, _>>()?;

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut scores = model.score_ids(&be, &pixels, &ids, &mask)?; // warm-up
    let mut batched = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        scores = model.score_ids(&be, &pixels, &ids, &mask)?;
        batched.push(t.elapsed().as_secs_f64());
    }
    let mut single = Vec::new();
    let mut single_scores = Vec::new();
    for _ in 0..reps {
        single_scores.clear();
        let t = Instant::now();
        for (i, p) in singles.iter().enumerate() {
            let s = model.score_ids(&be, p, &ids[i * l..(i + 1) * l], &mask[i * l..(i + 1) * l])?;
            single_scores.extend(s);
        }
        single.push(t.elapsed().as_secs_f64());
    }
    let want = &io["score"].data;
    let max_abs = scores
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (mb, ms) = (median(batched), median(single));
    println!(
        "{}",
        serde_json::json!({
            "impl": "ecad-native", "threads": rayon::current_num_threads(), "batch": b,
            "reps": reps, "median_s": mb, "images_per_s": b as f64 / mb,
            "per_image_median_s": ms, "per_image_images_per_s": b as f64 / ms,
            "load_s": load_s, "scores": scores, "per_image_scores": single_scores,
            "max_abs_vs_pytorch": max_abs,
        })
    );
    Ok(())
}
