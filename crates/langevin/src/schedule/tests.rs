//! Tests of the training schedules and σ spacings.
use super::sigmas::*;
use super::*;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn linear_matches_ddpm_reference() {
    let s = BetaSchedule::default().build(1000).unwrap();
    assert_eq!(s.betas[0], 1e-4);
    assert_eq!(s.betas[999], 0.02);
    assert!(close(
        s.betas[500] - s.betas[499],
        (0.02 - 1e-4) / 999.0,
        1e-9
    ));
    // ᾱ_T of DDPM's schedule, as diffusers reports it (4.0358e-05).
    assert!(
        close(s.terminal_alpha_bar(), 4.0358e-5, 1e-3),
        "{}",
        s.terminal_alpha_bar()
    );
    assert!(s.terminal_warning().is_none());
}

#[test]
fn scaled_linear_is_square_of_linear_sqrt() {
    let b = BetaSchedule::ScaledLinear {
        beta_start: 0.00085,
        beta_end: 0.012,
    }
    .betas(1000)
    .unwrap();
    assert!(close(b[0], 0.00085, 1e-12) && close(b[999], 0.012, 1e-12));
    let mid = ((0.00085f64.sqrt() + 0.012f64.sqrt()) / 2.0).powi(2);
    // t = 499.5 is the midpoint; average the two neighbours' square roots.
    assert!(close(
        ((b[499].sqrt() + b[500].sqrt()) / 2.0).powi(2),
        mid,
        1e-12
    ));
}

#[test]
fn cosine_follows_its_alpha_bar() {
    let t = 1000;
    let s = BetaSchedule::Cosine.build(t).unwrap();
    let f = |x: f64| {
        ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    // Uncapped steps telescope: ᾱ_t = f((t+1)/T)/f(0).
    for i in [0usize, 100, 500, 900] {
        assert!(
            close(
                s.alphas_cumprod[i],
                f((i + 1) as f64 / t as f64) / f(0.0),
                1e-9
            ),
            "t={i}"
        );
    }
    assert_eq!(s.betas[t - 1], 0.999);
}

#[test]
fn sigmoid_is_symmetric_about_the_midpoint() {
    let b = BetaSchedule::Sigmoid {
        beta_start: 1e-4,
        beta_end: 0.02,
    }
    .betas(101)
    .unwrap();
    assert!(close(b[50], (1e-4 + 0.02) / 2.0, 1e-12));
    assert!(close(b[0] - 1e-4, 0.02 - b[100], 1e-9));
    assert!(close(
        b[0],
        1e-4 + (0.02 - 1e-4) / (1.0 + 6f64.exp()),
        1e-12
    ));
}

#[test]
fn geometric_is_a_geometric_ramp_with_known_terminal_alpha_bar() {
    let s = BetaSchedule::Geometric {
        geometric_beta: 0.5,
    }
    .build(1000)
    .unwrap();
    assert_eq!(s.betas[999], 0.5);
    assert!(close(s.betas[998], 0.25, 1e-15));
    for i in 1..1000 {
        assert!(close(s.betas[i] / s.betas[i - 1], 2.0, 1e-12) || s.betas[i - 1] == 0.0);
    }
    // ᾱ_T = Π_k (1 - 2^-k) → the q-Pochhammer (1/2; 1/2)_∞ = 0.288788095086602…
    assert!(close(
        s.terminal_alpha_bar(),
        0.288_788_095_086_602_4,
        1e-12
    ));
    assert!(s.terminal_warning().is_some());
    // Small β: Σβ_t = 1 - (1-β)^T, ᾱ_T ≈ exp(-Σβ - ½Σβ²) is far from 0.
    let g = BetaSchedule::Geometric {
        geometric_beta: 0.01,
    }
    .build(1000)
    .unwrap();
    let sum: f64 = g.betas.iter().sum();
    assert!(close(sum, 1.0 - 0.99f64.powi(1000), 1e-12));
    let sum2: f64 = g.betas.iter().map(|b| b * b).sum();
    let sum3: f64 = g.betas.iter().map(|b| b * b * b).sum();
    // -ln(1-β) = β + β²/2 + β³/3 + O(β⁴), and Σβ⁴ < 1e-6 here.
    assert!(close(
        g.terminal_alpha_bar(),
        (-sum - sum2 / 2.0 - sum3 / 3.0).exp(),
        1e-6
    ));
    assert!(
        g.terminal_alpha_bar() > 0.35,
        "small β leaves most of the signal"
    );
}

#[test]
fn bad_parameters_are_clear_errors() {
    for b in [0.0, 1.0, -0.3, 1.5, f64::NAN] {
        let e = BetaSchedule::Geometric { geometric_beta: b }
            .betas(10)
            .unwrap_err();
        assert!(e.to_string().contains("geometric_beta"), "{e}");
    }
    let e = BetaSchedule::default().betas(0).unwrap_err();
    assert!(e.to_string().contains("num_train_timesteps"), "{e}");
    let e = BetaSchedule::Custom {
        trained_betas: vec![0.1, 0.2, 0.15],
    }
    .betas(3)
    .unwrap_err();
    assert!(e.to_string().contains("trained_betas[2]"), "{e}");
    let e = custom(&[3.0, 1.0, 2.0]).unwrap_err();
    assert!(e.to_string().contains("sigmas[2]"), "{e}");
    assert!(karras(10, 1.0, 0.5, 7.0).is_err());
}

#[test]
fn sigma_and_alpha_bar_are_inverse() {
    let s = BetaSchedule::default().build(1000).unwrap();
    for (a, sg) in s.alphas_cumprod.iter().zip(&s.sigmas) {
        assert!(close(alpha_cumprod_from_sigma(*sg), *a, 1e-12));
    }
    for t in [0.0, 3.5, 250.25, 999.0] {
        assert!(close(s.sigma_to_t(s.t_to_sigma(t)), t.max(1e-12), 1e-9) || t == 0.0);
    }
    assert_eq!(s.sigma_to_t(1e-9), 0.0);
    assert_eq!(s.sigma_to_t(1e9), 999.0);
    assert!(close(
        s.log_snr()[10],
        (s.alphas_cumprod[10] / (1.0 - s.alphas_cumprod[10])).ln(),
        1e-9
    ));
}

#[test]
fn karras_and_exponential_endpoints_and_shape() {
    let k = karras(5, 0.002, 80.0, 7.0).unwrap();
    assert_eq!(k.len(), 6);
    assert!(close(k[0], 80.0, 1e-12) && close(k[4], 0.002, 1e-12) && k[5] == 0.0);
    let mid = ((80f64.powf(1.0 / 7.0) + 0.002f64.powf(1.0 / 7.0)) / 2.0).powi(7);
    assert!(close(k[2], mid, 1e-12));
    let e = exponential(3, 0.01, 100.0).unwrap();
    assert!(close(e[1], 1.0, 1e-12));
}

#[test]
fn continuous_sdes() {
    let vp = VpSde::default();
    assert!(close(vp.alpha_bar(1.0), (-10.05f64).exp(), 1e-12));
    for t in [1e-3, 0.3, 1.0] {
        let s = vp.sigma(t);
        assert!(close(alpha_cumprod_from_sigma(s), vp.alpha_bar(t), 1e-10));
        assert!(close(vp.t_of_sigma(s), t, 1e-9));
    }
    let ve = VeSde::default();
    assert!(close(ve.sigma(0.5), (0.01f64 * 50.0).sqrt(), 1e-12));
    assert!(close(ve.t_of_sigma(ve.sigma(0.3)), 0.3, 1e-12));
    let s = ve.sigmas(4).unwrap();
    assert!(close(s[0], 50.0, 1e-12) && close(s[3], 0.01, 1e-12));
}

#[test]
fn discrete_sigmas_hit_the_table() {
    let s = BetaSchedule::default().build(1000).unwrap();
    let d = discrete(&s, 1000);
    assert_eq!(d.len(), 1001);
    assert!(close(d[0], s.sigma_max(), 1e-12) && close(d[999], s.sigma_min(), 1e-12));
    assert!(close(d[500], s.sigmas[499], 1e-12));
}

#[test]
fn serde_uses_diffusers_names() {
    let j = serde_json::to_value(BetaSchedule::Cosine).unwrap();
    assert_eq!(j["beta_schedule"], "squaredcos_cap_v2");
    let g: BetaSchedule =
        serde_json::from_str(r#"{"beta_schedule":"geometric","geometric_beta":0.5}"#).unwrap();
    assert_eq!(
        g,
        BetaSchedule::Geometric {
            geometric_beta: 0.5
        }
    );
}

#[test]
fn geometric_with_large_beta_keeps_tiny_sigmas_exact_and_skips_them() {
    // β = 0.9: β_t underflows to 0 for early t; σ_t stays exact where ᾱ rounds to 1.
    let s = BetaSchedule::Geometric {
        geometric_beta: 0.5,
    }
    .build(1000)
    .unwrap();
    // σ_t² = (1-ᾱ_t)/ᾱ_t ≈ Σ_{s≤t} β_s = 0.5^(999-t) (geometric sum) for tiny β.
    assert!(
        close(s.sigmas[900], (0.5f64.powi(99)).sqrt(), 1e-9),
        "{}",
        s.sigmas[900]
    );
    assert!(s.sigmas[0] > 0.0);
    let first = s.first_active_step();
    assert!(s.sigmas[first] >= SIGMA_FLOOR && s.sigmas[first - 1] < SIGMA_FLOOR);
    // σ² ≈ 0.5^(999-t) ≥ 1e-8 ⇔ 999 - t ≤ 26.6 → first active step 973.
    assert_eq!(first, 973);
    let g = BetaSchedule::Geometric {
        geometric_beta: 0.9,
    }
    .build(1000)
    .unwrap();
    assert_eq!(g.betas[0], 0.0);
    assert!(g.sigma_to_t(0.5).is_finite());
    assert!(close(
        sigmas::discrete(&g, 5)[4],
        g.sigmas[g.first_active_step()],
        1e-12
    ));
}

/// σ → t with the search on σ (no `ln` per bisection step) gives the bits of the search on
/// ln σ it replaced: at every table value (where training's σ come from), between neighbours,
/// and outside the table.
#[test]
fn sigma_to_t_equals_the_search_in_log_sigma() {
    let s = BetaSchedule::default().build(1000).unwrap();
    let by_log = |sigma: f64| -> f64 {
        let ln = |v: f64| v.max(1e-300).ln();
        let (ls, n) = (ln(sigma), s.sigmas.len());
        if ls <= ln(s.sigmas[0]) {
            return 0.0;
        }
        if ls >= ln(s.sigmas[n - 1]) {
            return (n - 1) as f64;
        }
        let hi = s.sigmas.partition_point(|v| ln(*v) < ls);
        let (a, b) = (ln(s.sigmas[hi - 1]), ln(s.sigmas[hi]));
        (hi - 1) as f64 + if b > a { (ls - a) / (b - a) } else { 0.0 }
    };
    let mut probes = s.sigmas.clone();
    probes.extend(s.sigmas.windows(2).map(|w| 0.5 * (w[0] + w[1])));
    probes.extend(s.sigmas.iter().map(|v| v * (1.0 + 1e-15)));
    probes.extend([0.0, 1e-9, 1e9, -1.0]);
    for x in probes {
        assert_eq!(s.sigma_to_t(x).to_bits(), by_log(x).to_bits(), "σ = {x:e}");
    }
}
