//! Parity of `UNet2DModel` with diffusers on the fixtures made by
//! `scripts/make_unet_fixtures.py`, plus folder round trips and load errors.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use langevin::nn::unet::{load_unet, read_unet_weights, save_unet, unet_from_tensors, UNet2DModel};
use langevin::Error;

const FIXTURES: [&str; 6] = [
    "plain",
    "attn_sharded",
    "fourier_scale_shift",
    "class_fp16",
    "class_timestep_mish",
    "learned_relu",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("langevin-unet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Io {
    x: Tensor,
    t: Tensor,
    labels: Option<Tensor>,
    out: Tensor,
}

fn io(name: &str) -> Io {
    let mut m =
        candle_core::safetensors::load(fixture(name).join("io.safetensors"), &Device::Cpu).unwrap();
    Io {
        x: m.remove("x").unwrap(),
        t: m.remove("timesteps").unwrap(),
        labels: m.remove("labels").map(|l| l.to_dtype(DType::U32).unwrap()),
        out: m.remove("out").unwrap(),
    }
}

fn run(model: &UNet2DModel, io: &Io) -> Tensor {
    model
        .forward_diffusers(&io.x, &io.t, io.labels.as_ref())
        .unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap() / m.to_scalar::<f64>().unwrap()
}

#[test]
fn unet_forward_matches_diffusers() {
    for name in FIXTURES {
        let model = load_unet(fixture(name), &Device::Cpu).unwrap();
        let io = io(name);
        let r = rel_err(&run(&model, &io), &io.out);
        println!("{name}: max relative error {r:.3e}");
        assert!(r <= 1e-4, "{name}: relative error {r:.3e}");
    }
}

#[test]
fn unet_accepts_legacy_attention_keys() {
    let name = "attn_sharded";
    let cfg = load_unet(fixture(name), &Device::Cpu).unwrap().config;
    let (tensors, path) = read_unet_weights(&fixture(name), &Device::Cpu).unwrap();
    let legacy: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, t)
        })
        .collect();
    assert!(legacy.keys().any(|k| k.contains(".proj_attn.")));
    let model = unet_from_tensors(cfg, legacy, &path, &Device::Cpu).unwrap();
    let io = io(name);
    assert!(rel_err(&run(&model, &io), &io.out) <= 1e-4);
}

#[test]
fn unet_saved_folder_reloads_identically() {
    for name in ["plain", "class_fp16"] {
        let model = load_unet(fixture(name), &Device::Cpu).unwrap();
        let (tensors, _) = read_unet_weights(&fixture(name), &Device::Cpu).unwrap();
        let dir = tmp_dir(&format!("save-{name}"));
        save_unet(&dir, &model.config, &tensors).unwrap();
        assert!(dir.join("diffusion_pytorch_model.safetensors").is_file());
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["_class_name"], "UNet2DModel");
        assert!(cfg["_diffusers_version"].is_string());
        let back = load_unet(&dir, &Device::Cpu).unwrap();
        assert_eq!(back.config, model.config);
        let io = io(name);
        let (a, b) = (run(&model, &io), run(&back, &io));
        assert_eq!(rel_err(&a, &b), 0.0, "{name}");
        // Every tensor comes back bit-identical (f16 ones as their exact f32 values).
        let (again, _) = read_unet_weights(&dir, &Device::Cpu).unwrap();
        assert_eq!(again.len(), tensors.len());
        for (k, t) in &tensors {
            let t = t.to_dtype(DType::F32).unwrap();
            assert_eq!(rel_err(&again[k], &t), 0.0, "{k}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Copy the `plain` fixture to a temp folder, letting `edit` change its config and tensors.
fn edited_plain(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut HashMap<String, Tensor>),
) -> PathBuf {
    let src = fixture("plain");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let (mut tensors, _) = read_unet_weights(&src, &Device::Cpu).unwrap();
    edit(&mut cfg, &mut tensors);
    let dir = tmp_dir(tag);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    dir
}

fn load_err(dir: &Path) -> Error {
    let e = match load_unet(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    };
    std::fs::remove_dir_all(dir).unwrap();
    e
}

#[test]
fn unet_unknown_block_type_is_a_config_error() {
    let dir = edited_plain("badblock", |c, _| {
        c["up_block_types"][1] = "CrossAttnUpBlock2D".into();
    });
    match load_err(&dir) {
        Error::Config { field, msg } => {
            assert_eq!(field, "up_block_types[1]");
            assert!(msg.contains("CrossAttnUpBlock2D"), "{msg}");
            assert!(msg.contains("UpBlock2D, AttnUpBlock2D"), "{msg}");
        }
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn unet_wrong_shape_missing_and_unused_tensors_are_named() {
    let dir = edited_plain("badshape", |_, t| {
        t.insert(
            "conv_in.weight".into(),
            Tensor::zeros((8, 3, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    let msg = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{msg}");
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("`conv_in.weight`"), "{msg}");
    assert!(
        msg.contains("[8, 3, 1, 1]") && msg.contains("[8, 3, 3, 3]"),
        "{msg}"
    );

    let dir = edited_plain("missing", |_, t| {
        t.remove("mid_block.resnets.1.norm2.bias");
    });
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("missing tensor `mid_block.resnets.1.norm2.bias`"),
        "{msg}"
    );
    assert!(msg.contains("[16]"), "{msg}");

    // A config that does not match the weights (no class embedding in this file).
    let dir = edited_plain("unused", |c, _| {
        c["add_attention"] = true.into();
        c["attention_head_dim"] = serde_json::Value::Null;
    });
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("mid_block.attentions.0"), "{msg}");

    let dir = edited_plain("extra", |_, t| {
        t.insert(
            "class_embedding.weight".into(),
            Tensor::zeros((10, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("not used") && msg.contains("class_embedding.weight"),
        "{msg}"
    );
}

#[test]
fn unet_labels_are_checked() {
    let model = load_unet(fixture("class_fp16"), &Device::Cpu).unwrap();
    let io = io("class_fp16");
    let e = model.forward_diffusers(&io.x, &io.t, None).unwrap_err();
    assert!(matches!(e, Error::Config { ref field, .. } if field == "labels"));
    let bad = Tensor::new(&[0u32, 10, 1], &Device::Cpu).unwrap();
    let e = model
        .forward_diffusers(&io.x, &io.t, Some(&bad))
        .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}
