//! The FLUX.1-dev / FLUX.1-schnell manifests (written by tools/manifests/gen_flux.py from the
//! tables of flux-spec §7.9) against the engine's own config-implied tensor list, and
//! `weights check` on a FLUX folder.

mod common;

use common::*;
use ecad_native::models::flux::FluxConfig;
use ecad_native::weights::config::JsonConfig;
use ecad_native::weights::manifest::manifests;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[test]
fn flux_manifests_match_the_config_implied_tensors() {
    let mut seen = 0;
    for m in manifests() {
        let c = JsonConfig {
            path: PathBuf::from(&m.name),
            map: m.config.clone(),
        };
        if !FluxConfig::is_flux(&c) {
            continue;
        }
        seen += 1;
        let cfg = FluxConfig::from_json(&c).unwrap();
        assert_eq!(cfg.axes_dims_rope, vec![16, 56, 56], "{}", m.name);
        let want: BTreeMap<_, _> = cfg.expected_tensors().into_iter().collect();
        let got: BTreeMap<_, _> = m.tensors.iter().cloned().collect();
        assert_eq!(got.len(), m.tensors.len(), "{}: duplicate names", m.name);
        assert_eq!(got, want, "{}", m.name);
        let params: usize = m
            .tensors
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // flux-spec §1 / §7.9: 1160 tensors and 11,901,408,320 parameters for dev; schnell lacks
        // the guidance embedder (4 tensors, 10,229,760 parameters).
        if cfg.guidance_embeds {
            assert_eq!(
                (m.tensors.len(), params),
                (1160, 11_901_408_320),
                "{}",
                m.name
            );
        } else {
            assert_eq!(
                (m.tensors.len(), params),
                (1156, 11_891_178_560),
                "{}",
                m.name
            );
        }
    }
    assert_eq!(seen, 2);
}

#[test]
fn weights_check_accepts_a_flux_folder() {
    let dir = fixtures().join("flux").join("guided");
    let out = cli()
        .args(["weights", "check", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("checked against the shapes its config.json implies"),
        "{s}"
    );
}
