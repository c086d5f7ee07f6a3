//! `ecad-native schedule list`: the built-in schedules with model, resolution, steps and MAC
//! speedup.

use std::process::Command;

use ecad_native::cache::builtin::builtins;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ecad-native"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn table_lists_every_builtin() {
    let text = run(&["schedule", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + builtins().len(), "{text}");
    for h in ["NAME", "MODEL", "RESOLUTION", "STEPS", "MAC SPEEDUP"] {
        assert!(lines[0].contains(h), "{}", lines[0]);
    }
    for (b, line) in builtins().iter().zip(&lines[1..]) {
        let speedup = format!("{:.2}×", b.cost().unwrap().mac_speedup);
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], b.name, "{line}");
        assert!(line.contains(b.model), "{line}");
        assert!(
            line.contains(&format!("{}x{}", b.width, b.height)),
            "{line}"
        );
        assert!(cols.contains(&"20"), "{line}");
        assert!(cols.contains(&speedup.as_str()), "{line}: {speedup}");
    }
    assert!(lines[1].starts_with("pixart-alpha-256/fast "), "{text}");
    assert!(text.contains("2.68×"), "{text}");
    assert!(text.contains("1024x1024"), "{text}");
}

#[test]
fn json_lists_every_builtin() {
    let v: serde_json::Value = serde_json::from_str(&run(&["schedule", "list", "--json"])).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), builtins().len());
    for (b, e) in builtins().iter().zip(a) {
        let c = b.cost().unwrap();
        assert_eq!(e["name"], b.name);
        assert_eq!(e["model"], b.model);
        assert_eq!(e["height"], b.height);
        assert_eq!(e["width"], b.width);
        assert_eq!(e["steps"], b.steps);
        assert_eq!(e["total_macs"], c.total_macs);
        assert_eq!(e["baseline_macs"], c.baseline_macs);
        let sp = e["mac_speedup"].as_f64().unwrap();
        assert!((sp - c.mac_speedup).abs() < 0.006, "{}: {sp}", b.name);
        assert_eq!(e["source"], b.path);
    }
}
