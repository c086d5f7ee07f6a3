//! `schedule list`: the compiled-in paper schedules with their model, size, steps and ECAD MAC
//! speedup.

use crate::cache::builtin::builtins;

/// Prints the table (or, with `json`, one JSON array) to stdout.
pub fn run(json: bool) -> anyhow::Result<()> {
    print!("{}", render(json)?);
    Ok(())
}

/// The text `schedule list` prints.
pub fn render(json: bool) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for b in builtins() {
        rows.push((b, b.cost()?));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(b, c)| {
                serde_json::json!({
                    "name": b.name,
                    "model": b.model,
                    "family": b.family.to_string(),
                    "height": b.height,
                    "width": b.width,
                    "steps": b.steps,
                    "total_macs": c.total_macs,
                    "baseline_macs": c.baseline_macs,
                    "mac_speedup": (c.mac_speedup * 100.0).round() / 100.0,
                    "source": b.path,
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = format!(
        "{:<26} {:<11} {:>10} {:>5} {:>12}  {}\n",
        "NAME", "MODEL", "RESOLUTION", "STEPS", "MAC SPEEDUP", "SOURCE"
    );
    for (b, c) in &rows {
        out += &format!(
            "{:<26} {:<11} {:>10} {:>5} {:>11.2}×  {}\n",
            b.name,
            b.model,
            format!("{}x{}", b.width, b.height),
            b.steps,
            c.mac_speedup,
            b.path
        );
    }
    Ok(out)
}
