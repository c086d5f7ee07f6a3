//! `bench --policy-sweep`: ECAD's paper schedules (with and without forecasting), the runtime
//! cache policies at a few thresholds, FORA and T-GATE, on one model in one bench run; the
//! report as a markdown table and as a plot of fidelity against speedup (an SVG written here).
//!
//! The list ([`sweep_specs`]) depends only on the model's layout: the paper schedules are the
//! compiled-in ones of the same family, block counts and step count (none when `--steps`
//! differs from theirs); T-GATE only where the blocks have cross-attention (PixArt).
//! Thresholds: each policy's published defaults plus larger values. A random-weight model's
//! features change much more per step than a trained model's (block 0's residual moved by
//! 37–115 % per step on the tiny FLUX fixture, tools/golden/README.md), so at the defaults the
//! runtime policies skip nothing there; the larger values show their trade-off on such a model.

use super::bench::{BenchReport, BenchRow};
use crate::cache::builtin::builtins;
use crate::cache::schedule::ModelFamily;

/// What a sweep row is, for the table and the plot's colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepGroup {
    /// The reference row.
    Uncached,
    /// A compiled-in paper schedule as published.
    Paper,
    /// A paper schedule with its reused components forecast (`+taylor1` / `+taylor2`).
    PaperForecast,
    /// A runtime policy (FBCache, DBCache, TeaCache, TaylorSeer).
    Policy,
    /// A static heuristic (FORA, T-GATE).
    Heuristic,
}

impl SweepGroup {
    /// The label in the table and the legend.
    pub fn label(self) -> &'static str {
        match self {
            SweepGroup::Uncached => "uncached",
            SweepGroup::Paper => "ECAD paper",
            SweepGroup::PaperForecast => "ECAD paper + forecast",
            SweepGroup::Policy => "runtime policy",
            SweepGroup::Heuristic => "FORA / T-GATE",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            SweepGroup::Uncached => "#000000",
            SweepGroup::Paper => "#1f77b4",
            SweepGroup::PaperForecast => "#17becf",
            SweepGroup::Policy => "#d62728",
            SweepGroup::Heuristic => "#7f7f7f",
        }
    }
}

/// The group of a `--schedule` spec: a runtime-policy name, a heuristic, a spec with a
/// `+taylorN` forecast, or (anything else: a built-in or a schedule file) a static schedule.
pub fn classify(spec: &str) -> SweepGroup {
    let s = spec.trim();
    let head = s.split(':').next().unwrap_or("");
    if ["fbcache", "dbcache", "teacache", "taylorseer"].contains(&head) {
        SweepGroup::Policy
    } else if s.ends_with("+taylor1") || s.ends_with("+taylor2") {
        SweepGroup::PaperForecast
    } else if [
        "fora",
        "tgate",
        "ca_sa",
        "recompute_all_every",
        "recompute_ca_sa_every",
    ]
    .contains(&head)
    {
        SweepGroup::Heuristic
    } else {
        SweepGroup::Paper
    }
}

/// One entry of the sweep: the `--schedule` spec and its group.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SweepEntry {
    /// What `--schedule` takes.
    pub spec: String,
    /// For the table and the plot.
    pub group: SweepGroup,
}

/// The runtime-policy specs of the sweep, per family. Defaults of the original projects first:
/// FBCache 0.05 (diffusers) / 0.08 (ParaAttention's FLUX example); DBCache cache-dit's
/// `F8B0`, threshold 0.08, 8 warm-up steps; TeaCache4FLUX's 0.25 / 0.4 / 0.6 ("1.5× / 1.8× /
/// 2.0×"); TaylorSeer diffusers' 5 / order 1 / 3 warm-up steps.
pub const POLICY_SPECS: &[&str] = &[
    "fbcache:0.08",
    "fbcache:0.3",
    "fbcache:0.6",
    "dbcache:8:0:0.08:8",
    "dbcache:4:0:0.6:4",
    "taylorseer:5:1",
    "taylorseer:5:2",
    "taylorseer:3:2:2",
];

/// TeaCache's thresholds in the sweep (TeaCache4FLUX's 0.4, "1.8×", and a larger one).
pub const TEACACHE_THRESHOLDS: &[&str] = &["0.4", "1.0"];

/// Every spec of a sweep over a model with this layout and step count, in table order.
/// TeaCache needs its rescaling coefficients: FLUX's ship with the engine; for another family
/// its rows are there only with a coefficients file (`teacache_coeffs`, from
/// `schedule fit-teacache`).
pub fn sweep_specs(
    family: ModelFamily,
    blocks: usize,
    single_blocks: usize,
    steps: usize,
    teacache_coeffs: Option<&str>,
) -> Vec<SweepEntry> {
    let mut out = Vec::new();
    let entry = |spec: String, group| SweepEntry { spec, group };
    for b in builtins() {
        if b.family == family
            && b.blocks == blocks
            && b.single_blocks == single_blocks
            && b.steps == steps
        {
            out.push(entry(b.name.to_string(), SweepGroup::Paper));
            for f in ["taylor1", "taylor2"] {
                out.push(entry(format!("{}+{f}", b.name), SweepGroup::PaperForecast));
            }
        }
    }
    for s in POLICY_SPECS {
        out.push(entry(s.to_string(), SweepGroup::Policy));
    }
    for t in TEACACHE_THRESHOLDS {
        match (teacache_coeffs, family) {
            (Some(f), _) => out.push(entry(format!("teacache:{t}:{f}"), SweepGroup::Policy)),
            (None, ModelFamily::Flux) => {
                out.push(entry(format!("teacache:{t}"), SweepGroup::Policy))
            }
            (None, _) => {}
        }
    }
    for s in ["fora:2", "fora:3"] {
        out.push(entry(s.to_string(), SweepGroup::Heuristic));
    }
    if family == ModelFamily::PixArt {
        out.push(entry(format!("tgate:{}", steps / 2), SweepGroup::Heuristic));
    }
    out
}

/// A sweep's rows with their groups and the Pareto marks (no other row has both a higher
/// latency speedup and a higher PSNR).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepRow {
    /// The spec as given (the bench row's own name may differ).
    pub spec: String,
    /// The row's group.
    pub group: SweepGroup,
    /// Not dominated in (latency speedup, PSNR) by any other row.
    pub pareto: bool,
    /// The `bench --quality` metric's mean score of the row's decoded images (ImageReward,
    /// CLIP score); `None` without `--quality`.
    pub quality: Option<f64>,
    /// The bench row.
    #[serde(flatten)]
    pub row: BenchRow,
}

/// The sweep report: the bench report's header and the rows with their groups.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepReport {
    /// The bench report (its rows are repeated, annotated, in `sweep`).
    #[serde(flatten)]
    pub bench: BenchReport,
    /// The annotated rows, uncached first.
    pub sweep: Vec<SweepRow>,
}

impl SweepReport {
    /// Pairs the bench rows (uncached first, then one per entry, in order) with the entries.
    pub fn new(bench: BenchReport, entries: &[SweepEntry]) -> SweepReport {
        let mut sweep: Vec<SweepRow> = bench
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (spec, group) = match i.checked_sub(1).and_then(|j| entries.get(j)) {
                    Some(e) => (e.spec.clone(), e.group),
                    None => (r.schedule.clone(), SweepGroup::Uncached),
                };
                SweepRow {
                    spec,
                    group,
                    pareto: false,
                    quality: r.quality,
                    row: r.clone(),
                }
            })
            .collect();
        let pts: Vec<(f64, f64)> = sweep.iter().map(|r| point(&r.row)).collect();
        for (i, r) in sweep.iter_mut().enumerate() {
            let (x, y) = pts[i];
            r.pareto = x.is_finite()
                && !pts
                    .iter()
                    .enumerate()
                    .any(|(j, &(x2, y2))| j != i && x2 >= x && y2 >= y && (x2 > x || y2 > y));
        }
        SweepReport { bench, sweep }
    }

    /// The markdown table (with a header line saying what was run).
    pub fn markdown(&self) -> String {
        let b = &self.bench;
        let mut s = format!(
            "{} on {} ({} threads): {} steps, guidance {}, {} prompt(s), latent {}x{}, text {}; \
             median of {} after {} warm-up. ★: not dominated in (time ×, PSNR).\n\n",
            b.model,
            b.device,
            b.threads,
            b.steps,
            b.guidance,
            b.prompts,
            b.latent[0],
            b.latent[1],
            b.text_len,
            b.reps,
            b.warmup
        );
        s += &format!(
            "| schedule | kind | TMACs | MAC × | median | time × | rel. err | PSNR | {} |\n",
            b.quality_metric.as_deref().unwrap_or("quality")
        );
        s += "|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.sweep {
            let x = &r.row;
            let psnr = if x.psnr_db.is_finite() {
                format!("{:.1} dB", x.psnr_db)
            } else {
                "∞".to_string()
            };
            s += &format!(
                "| {}{} | {} | {:.4} | {:.2} | {} | {:.2} | {:.3} | {} | {} |\n",
                r.spec,
                if r.pareto { " ★" } else { "" },
                r.group.label(),
                x.macs as f64 / 1e12,
                x.mac_speedup,
                fmt_ms(x.median_ms),
                x.latency_speedup,
                x.rel_error,
                psnr,
                r.quality.map_or("—".to_string(), |q| format!("{q:.3}"))
            );
        }
        s
    }

    /// The plot: PSNR against the latency speedup (filled marks) and the MAC speedup (hollow
    /// marks joined to their filled twin), coloured by group, the Pareto front drawn.
    pub fn svg(&self) -> String {
        let (w, h) = (820.0f64, 560.0f64);
        let (l, r, t, bm) = (70.0, 200.0, 40.0, 60.0);
        let rows: Vec<&SweepRow> = self
            .sweep
            .iter()
            .filter(|r| r.row.psnr_db.is_finite())
            .collect();
        let xs = rows
            .iter()
            .flat_map(|r| [r.row.latency_speedup, r.row.mac_speedup])
            .filter(|v| v.is_finite());
        let x_max = xs.fold(1.0f64, f64::max).max(1.5) * 1.05;
        let ys: Vec<f64> = rows.iter().map(|r| r.row.psnr_db).collect();
        let y_min = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let y_max = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (y_lo, y_hi) = if ys.is_empty() {
            (0.0, 1.0)
        } else {
            let pad = ((y_max - y_min) * 0.08).max(1.0);
            ((y_min - pad).floor(), (y_max + pad).ceil())
        };
        let px = |v: f64| l + (v - 1.0).max(0.0) / (x_max - 1.0) * (w - l - r);
        let py = |v: f64| t + (y_hi - v) / (y_hi - y_lo) * (h - t - bm);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        s += &format!(
            "<text x=\"{l}\" y=\"22\" font-size=\"14\">{} — fidelity to the uncached run vs speedup \
             ({} steps)</text>\n",
            xml(&self.bench.model),
            self.bench.steps
        );
        // Axes and ticks.
        let (x0, x1, y0, y1) = (l, w - r, t, h - bm);
        s += &format!("<rect x=\"{x0}\" y=\"{y0}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", x1 - x0, y1 - y0);
        let mut v = 1.0;
        while v <= x_max + 1e-9 {
            let x = px(v);
            s += &format!("<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{y1}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.1}×</text>\n", y1 + 16.0);
            v += if x_max > 6.0 { 1.0 } else { 0.5 };
        }
        let step = ((y_hi - y_lo) / 8.0).ceil().max(1.0);
        let mut v = y_lo;
        while v <= y_hi + 1e-9 {
            let y = py(v);
            s += &format!("<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n", x0 - 6.0, y + 4.0);
            v += step;
        }
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">speedup over uncached (filled: wall clock; hollow: ECAD MACs + policy overhead)</text>\n", (x0 + x1) / 2.0, h - 18.0);
        s += &format!("<text x=\"18\" y=\"{:.1}\" transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\">PSNR vs uncached (dB)</text>\n", (y0 + y1) / 2.0, (y0 + y1) / 2.0);
        // Pareto front.
        let mut front: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.pareto)
            .map(|r| (px(r.row.latency_speedup), py(r.row.psnr_db)))
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        if front.len() > 1 {
            let pts: Vec<String> = front
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            s += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n", pts.join(" "));
        }
        for r in &rows {
            let c = r.group.colour();
            let (xt, xm, y) = (
                px(r.row.latency_speedup),
                px(r.row.mac_speedup),
                py(r.row.psnr_db),
            );
            s += &format!("<line x1=\"{xt:.1}\" y1=\"{y:.1}\" x2=\"{xm:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" stroke-opacity=\"0.4\"/>\n");
            s += &format!(
                "<circle cx=\"{xm:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"none\" stroke=\"{c}\"/>\n"
            );
            s += &format!("<circle cx=\"{xt:.1}\" cy=\"{y:.1}\" r=\"4.5\" fill=\"{c}\"><title>{}: {:.2}× time, {:.2}× MACs, {:.1} dB</title></circle>\n",
                xml(&r.spec), r.row.latency_speedup, r.row.mac_speedup, r.row.psnr_db);
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\" font-size=\"9\">{}</text>\n",
                xt + 6.0,
                y - 5.0,
                xml(&r.spec)
            );
        }
        // Legend.
        let groups = [
            SweepGroup::Paper,
            SweepGroup::PaperForecast,
            SweepGroup::Policy,
            SweepGroup::Heuristic,
        ];
        for (i, g) in groups.iter().enumerate() {
            let y = t + 14.0 + 18.0 * i as f64;
            s += &format!("<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"4.5\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                x1 + 16.0, g.colour(), x1 + 26.0, y + 4.0, g.label());
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\">dashed: Pareto front</text>\n",
            x1 + 12.0,
            t + 14.0 + 18.0 * 4.0 + 4.0
        );
        s += "</svg>\n";
        s
    }
}

fn point(r: &BenchRow) -> (f64, f64) {
    let y = if r.psnr_db.is_finite() {
        r.psnr_db
    } else {
        f64::MAX
    };
    (r.latency_speedup, y)
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_lists_the_family_s_paper_schedules_and_policies() {
        let p = sweep_specs(ModelFamily::PixArt, 28, 0, 20, None);
        assert!(!p.iter().any(|e| e.spec.starts_with("teacache")));
        let pc = sweep_specs(ModelFamily::PixArt, 28, 0, 20, Some("c.json"));
        assert!(pc.iter().any(|e| e.spec == "teacache:0.4:c.json"));
        let specs: Vec<&str> = p.iter().map(|e| e.spec.as_str()).collect();
        assert!(specs.contains(&"pixart-alpha-256/fast"));
        assert!(specs.contains(&"pixart-sigma-256/fast+taylor2"));
        assert!(specs.contains(&"tgate:10"));
        assert!(!specs.iter().any(|s| s.starts_with("flux-")));
        let f = sweep_specs(ModelFamily::Flux, 19, 38, 20, None);
        assert!(f.iter().any(|e| e.spec == "teacache:1.0"));
        assert!(f.iter().any(|e| e.spec == "flux-256/faster+taylor1"));
        assert!(!f.iter().any(|e| e.spec.starts_with("tgate")));
        for e in p.iter().chain(&f) {
            assert_eq!(classify(&e.spec), e.group, "{}", e.spec);
        }
        // Other step counts: no paper schedule, the rest unchanged.
        let q = sweep_specs(ModelFamily::PixArt, 28, 0, 10, None);
        assert!(q.iter().all(|e| e.group != SweepGroup::Paper));
        assert!(q.iter().any(|e| e.spec == "fbcache:0.08"));
    }
}
