//! The search's output files. Everything here is a deterministic function of the search state
//! (no timestamps, timings or paths), except with the latency objective, whose values are
//! measurements.

use super::evaluate::{cand_name, CostMetric, Evaluator, QualityMetric};
use super::genome::to_hex;
use super::nsga2::non_dominated;
use super::state::{ArchiveEntry, SearchState};
use super::{SResult, SearchError};
use crate::backend::Backend;
use crate::weights::atomic_write;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// The fixed reference point of the hypervolume, in normalised objective space.
pub const HV_REFERENCE: [f64; 2] = [1.0, 1.0];

/// Normalised objectives (see docs/SEARCH.md): cost / cost of the no-cache schedule; quality
/// rel-l2 as is, PSNR as `1 − PSNR/100`, external as `quality − quality(no cache) + 1`.
pub fn normalise(
    f: [f64; 2],
    full_cost: f64,
    default_quality: f64,
    quality: &QualityMetric,
) -> [f64; 2] {
    let q = match quality {
        QualityMetric::RelL2 => f[1],
        QualityMetric::Psnr => 1.0 + f[1] / 100.0,
        QualityMetric::External(_) | QualityMetric::Image(_) => f[1] - default_quality + 1.0,
    };
    [f[0] / full_cost, q]
}

/// 2-D hypervolume dominated by `points` (minimisation) and bounded by `reference`.
pub fn hypervolume(points: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    let inside: Vec<[f64; 2]> = points
        .iter()
        .copied()
        .filter(|p| p[0] < reference[0] && p[1] < reference[1])
        .collect();
    let mut front: Vec<[f64; 2]> = non_dominated(&inside).iter().map(|&i| inside[i]).collect();
    front.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut hv = 0.0;
    for (k, p) in front.iter().enumerate() {
        let next_x = front.get(k + 1).map_or(reference[0], |q| q[0]);
        hv += (next_x - p[0]) * (reference[1] - p[1]);
    }
    hv
}

/// Archive indices of the Pareto front: feasible entries that entered the search (generation
/// ≥ 1, up to `upto`), non-dominated; sorted by cost, quality, id.
pub fn front_indices(archive: &[ArchiveEntry], upto: usize) -> Vec<usize> {
    let pool: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            let e = &archive[i];
            e.cv <= 0.0 && e.generation >= 1 && e.generation <= upto
        })
        .collect();
    let f: Vec<[f64; 2]> = pool.iter().map(|&i| archive[i].f()).collect();
    let mut front: Vec<usize> = non_dominated(&f).iter().map(|&k| pool[k]).collect();
    front.sort_by(|&a, &b| {
        let (x, y) = (&archive[a], &archive[b]);
        x.eval
            .cost
            .total_cmp(&y.eval.cost)
            .then(x.eval.quality.total_cmp(&y.eval.quality))
            .then(x.id.cmp(&y.id))
    });
    front
}

fn write(path: &Path, text: &str) -> SResult<()> {
    Ok(atomic_write(path, text.as_bytes())?)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json");
    s.push('\n');
    s
}

/// Writes archive.json, front.json, front.csv, front/*.json, front.svg and stats.csv.
pub fn write_outputs<B: Backend>(
    out: &Path,
    st: &SearchState,
    ev: &Evaluator<'_, B>,
) -> SResult<()> {
    let quality = ev.quality_metric();
    let cost = ev.cost_metric();
    let latency = cost == CostMetric::Latency;
    let n_var = ev.genome_len();
    let image = matches!(quality, QualityMetric::Image(_));
    let reference_score = ev.reference_score();
    let entry_json = |e: &ArchiveEntry| -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(e.id));
        m.insert("generation".into(), json!(e.generation));
        m.insert("macs".into(), json!(e.eval.macs));
        if latency {
            m.insert("latency_ms".into(), json!(e.eval.latency_ms));
        }
        m.insert("quality".into(), json!(e.eval.quality));
        if image {
            // the metric's own score (higher is better) beside the uncached run's
            m.insert("score".into(), json!(-e.eval.quality));
            m.insert("reference_score".into(), json!(reference_score));
        }
        m.insert("feasible".into(), json!(e.cv <= 0.0));
        if let Some(n) = &e.name {
            m.insert("heuristic".into(), json!(n));
        }
        m.insert("genome".into(), json!(to_hex(&e.genome)));
        Value::Object(m)
    };
    let mut header = json!({
        "cost": cost.name(),
        "quality": quality.name(),
        "steps": ev.steps(),
        "blocks": ev.blocks(),
        "genome_bits": n_var,
        "genome_encoding": "hex, 4 bits per digit, most significant first, ECAD order (step, block, [attn1, attn2, ff]); 1 = recompute",
    });
    if image {
        header["reference_score"] = json!(reference_score);
        header["reference_score_note"] =
            json!("the metric's mean score of the uncached run over the calibration samples; `score` = −quality");
    }
    if ev.family() == crate::cache::schedule::ModelFamily::Flux {
        header["model_family"] = json!("FLUX");
        header["single_blocks"] = json!(ev.single_blocks());
        header["genome_encoding"] = json!(
            "hex, 4 bits per digit, most significant first, ECAD order (step, double blocks \
             [full_attn, full_ff, full_ff_context], then single blocks [single_attn, \
             single_proj_mlp, single_proj_out]); 1 = recompute"
        );
    }

    // archive.json
    let mut archive = header.clone();
    archive["generations"] = json!(st.generation);
    archive["entries"] = Value::Array(st.archive.iter().map(entry_json).collect());
    write(&out.join("archive.json"), &pretty(&archive))?;

    // front
    let front = front_indices(&st.archive, st.generation);
    let fdir = out.join("front");
    std::fs::create_dir_all(&fdir).map_err(|e| SearchError::Io {
        path: fdir.display().to_string(),
        source: e,
    })?;
    let mut members = Vec::new();
    let mut csv = format!(
        "id,macs,quality,generation{}\n",
        if latency { ",latency_ms" } else { "" }
    );
    let mut keep = std::collections::BTreeSet::new();
    for &i in &front {
        let e = &st.archive[i];
        let file = format!("{}.json", cand_name(e.id));
        keep.insert(file.clone());
        let mut s = ev.schedule(&e.genome, &format!("search_{}", cand_name(e.id)))?;
        let (total, by_step) = ev.macs(&s)?;
        let mut steps = serde_json::Map::new();
        for (k, m) in by_step.iter().enumerate() {
            steps.insert(format!("{k:03}"), json!({ "macs": m }));
        }
        let mut search_meta = json!({
            "id": e.id,
            "generation": e.generation,
            "quality_metric": quality.name(),
            "quality": e.eval.quality,
        });
        if image {
            search_meta["score"] = json!(-e.eval.quality);
            search_meta["reference_score"] = json!(reference_score);
        }
        s.metrics = Some(json!({
            "by_inference_step": steps,
            "total_macs": total,
            "total_macs_T": total as f64 / 1e12,
            "search": search_meta,
        }));
        let mut text = s.to_json_string();
        text.push('\n');
        write(&fdir.join(&file), &text)?;
        let mut m = entry_json(e);
        m.as_object_mut()
            .expect("object")
            .insert("file".into(), json!(format!("front/{file}")));
        members.push(m);
        let _ = writeln!(
            csv,
            "{},{},{},{}{}",
            e.id,
            e.eval.macs,
            e.eval.quality,
            e.generation,
            if latency {
                format!(",{}", e.eval.latency_ms)
            } else {
                String::new()
            }
        );
    }
    // Temporary files of a killed earlier run (its last writes were cut short).
    crate::util::remove_stale_temporaries(out);
    crate::util::remove_stale_temporaries(&fdir);
    // stale front members of earlier generations
    if let Ok(rd) = std::fs::read_dir(&fdir) {
        let mut stale: Vec<_> = rd
            .flatten()
            .map(|d| d.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("cand_") && n.ends_with(".json") && !keep.contains(n))
            .collect();
        stale.sort();
        for n in stale {
            let _ = std::fs::remove_file(fdir.join(n));
        }
    }
    let mut fj = header.clone();
    fj["generations"] = json!(st.generation);
    fj["members"] = Value::Array(members);
    write(&out.join("front.json"), &pretty(&fj))?;
    write(&out.join("front.csv"), &csv)?;

    // stats.csv
    let mut s =
        String::from("generation,evaluated,offspring,population,feasible,front_size,hypervolume\n");
    for r in &st.stats {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}",
            r.generation,
            r.evaluated,
            r.offspring,
            r.population,
            r.feasible,
            r.front_size,
            r.hypervolume
        );
    }
    write(&out.join("stats.csv"), &s)?;

    // sharing.csv (work accounting: depends on the cache history, not byte-stable)
    let mut s = String::from(
        "generation,candidates,naive_steps,computed_steps,steps_saved,naive_tmacs,computed_tmacs,macs_saved,cache_hits,seconds,evals_per_s,decode_seconds,score_seconds\n",
    );
    for r in &st.sharing {
        let w = &r.work;
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.3},{:.3},{:.3},{:.3}",
            r.generation,
            w.candidates,
            w.naive_steps,
            w.computed_steps,
            w.steps_saved(),
            w.naive_macs / 1e12,
            w.computed_macs / 1e12,
            w.macs_saved(),
            w.cache_hits,
            w.seconds,
            if w.seconds > 0.0 {
                w.candidates as f64 / w.seconds
            } else {
                0.0
            },
            w.decode_seconds,
            w.score_seconds,
        );
    }
    write(&out.join("sharing.csv"), &s)?;

    write(&out.join("front.svg"), &plot(st, &front, cost, quality))?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round numbers for axis ticks.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 && v.len() < 12 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The front, every evaluated candidate and the built-in heuristics, as a hand-written SVG.
pub fn plot(
    st: &SearchState,
    front: &[usize],
    cost: CostMetric,
    quality: &QualityMetric,
) -> String {
    let (w, h) = (760.0, 500.0);
    let (ml, mr, mt, mb) = (80.0, 170.0, 40.0, 60.0);
    let scale_x = match cost {
        CostMetric::Macs => 1e12,
        CostMetric::Latency => 1.0,
    };
    let xlabel = match cost {
        CostMetric::Macs => "ECAD TMACs",
        CostMetric::Latency => "latency (ms per sample)",
    };
    let ylabel = format!("{} (lower is better)", quality.name());
    let pts: Vec<(f64, f64)> = st
        .archive
        .iter()
        .map(|e| (e.eval.cost / scale_x, e.eval.quality))
        .collect();
    let finite: Vec<&(f64, f64)> = pts
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite() && p.1 < 1e29)
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &finite {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if finite.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = if b > a {
            (b - a) * 0.05
        } else {
            a.abs().max(1.0) * 0.05
        };
        (a - d, b + d)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">ECAD schedule search: Pareto front after {} generation(s)</text>"#,
        (w - mr + ml) / 2.0,
        st.generation
    );
    // axes
    let _ = writeln!(
        s,
        r#"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        w - ml - mr,
        h - mt - mb
    );
    for t in ticks(x0, x1) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{:.2}" x2="{x:.2}" y2="{mt}" stroke="#eeeeee"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            h - mb,
            h - mb + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#eeeeee"/><text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
            w - mr,
            ml - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#,
        (w - mr + ml) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (h - mb + mt) / 2.0,
        (h - mb + mt) / 2.0,
        esc(&ylabel)
    );
    // every evaluated candidate
    for (e, p) in st.archive.iter().zip(&pts) {
        if e.generation >= 1 && p.1 < 1e29 {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.2}" cy="{:.2}" r="2" fill="#bbbbbb"/>"##,
                px(p.0),
                py(p.1)
            );
        }
    }
    // the front as a staircase
    if !front.is_empty() {
        let mut d = String::new();
        for (k, &i) in front.iter().enumerate() {
            let (x, y) = (px(pts[i].0), py(pts[i].1));
            if k == 0 {
                let _ = write!(d, "M{x:.2},{y:.2}");
            } else {
                let prev_y = py(pts[front[k - 1]].1);
                let _ = write!(d, " L{x:.2},{prev_y:.2} L{x:.2},{y:.2}");
            }
        }
        let _ = writeln!(
            s,
            r##"<path d="{d}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##
        );
        for &i in front {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="#1f77b4"><title>{}</title></circle>"##,
                px(pts[i].0),
                py(pts[i].1),
                cand_name(st.archive[i].id)
            );
        }
    }
    // heuristics: labels placed greedily without overlapping (a label that finds no free
    // spot is left out; the marker keeps it as a tooltip)
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    for (label, id) in &st.heuristics {
        let Some(i) = st.archive.iter().position(|e| e.id == *id) else {
            continue;
        };
        let (x, y) = (pts[i].0, pts[i].1);
        if y >= 1e29 {
            continue;
        }
        let (cx, cy) = (px(x), py(y));
        let _ = writeln!(
            s,
            r##"<rect x="{:.2}" y="{:.2}" width="6" height="6" fill="#d62728"><title>{}</title></rect>"##,
            cx - 3.0,
            cy - 3.0,
            esc(label)
        );
        let tw = 5.2 * label.chars().count() as f64;
        for dy in [0.0, 10.0, -10.0, 20.0, -20.0, 30.0, -30.0] {
            let (x0b, y0b) = (cx + 5.0, cy - 4.0 + dy - 8.0);
            let (x1b, y1b) = (x0b + tw, y0b + 9.0);
            let free = placed
                .iter()
                .all(|b| x1b <= b.0 || x0b >= b.2 || y1b <= b.1 || y0b >= b.3);
            if free && x1b <= w - 4.0 {
                placed.push((x0b, y0b, x1b, y1b));
                let _ = writeln!(
                    s,
                    r##"<text x="{:.2}" y="{:.2}" fill="#d62728" font-size="9">{}</text>"##,
                    cx + 5.0,
                    cy - 4.0 + dy,
                    esc(label)
                );
                break;
            }
        }
    }
    // legend
    let lx = w - mr + 12.0;
    let _ = writeln!(
        s,
        r##"<circle cx="{lx}" cy="{}" r="3.5" fill="#1f77b4"/><text x="{}" y="{}">Pareto front ({})</text>"##,
        mt + 10.0,
        lx + 8.0,
        mt + 14.0,
        front.len()
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{lx}" cy="{}" r="2" fill="#bbbbbb"/><text x="{}" y="{}">evaluated ({})</text>"##,
        mt + 28.0,
        lx + 8.0,
        mt + 32.0,
        st.archive.iter().filter(|e| e.generation >= 1).count()
    );
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="6" height="6" fill="#d62728"/><text x="{}" y="{}">built-in heuristics</text>"##,
        lx - 3.0,
        mt + 43.0,
        lx + 8.0,
        mt + 50.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypervolume_hand_worked() {
        // points (0.2, 0.6), (0.5, 0.3) with reference (1, 1):
        // (0.5 − 0.2)·(1 − 0.6) + (1 − 0.5)·(1 − 0.3) = 0.12 + 0.35 = 0.47
        let hv = hypervolume(&[[0.5, 0.3], [0.2, 0.6]], [1.0, 1.0]);
        assert!((hv - 0.47).abs() < 1e-12, "{hv}");
        // dominated and outside points change nothing
        let hv2 = hypervolume(
            &[[0.5, 0.3], [0.2, 0.6], [0.6, 0.7], [1.5, 0.1], [0.1, 1.0]],
            [1.0, 1.0],
        );
        assert_eq!(hv, hv2);
        assert_eq!(hypervolume(&[], [1.0, 1.0]), 0.0);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(fmt_tick(0.6000000000000001), "0.6");
        assert!(ticks(3.2, 5.71).len() >= 2);
    }
}
