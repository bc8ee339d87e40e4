//! A small deterministic mutator in the style of libFuzzer's: byte flips, interesting values,
//! insertions, deletions, splices and truncation on raw bytes, plus value-level mutations of
//! JSON documents (numbers out of range, wrong types, missing keys).
use rand::Rng;
use serde_json::Value;

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];

/// One to four byte-level mutations of `data`.
pub fn mutate_bytes(data: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = d.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] =
                    [0u8, 0xff, 0x7f, 0x80, b'-', b'9', b'"', b'\n', b','][rng.random_range(0..9)];
            }
            2 if len >= 8 => {
                let i = rng.random_range(0..=len - 8);
                let v = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
                if rng.random() {
                    d[i..i + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    d[i..i + 4].copy_from_slice(&(v as u32).to_be_bytes());
                }
            }
            3 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                d.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                d.drain(i..i + n);
            }
            5 if len > 0 => d.truncate(rng.random_range(0..len)),
            6 if len > 1 => {
                // Copy a chunk of the input over another place.
                let (a, b) = (rng.random_range(0..len), rng.random_range(0..len));
                let n = rng.random_range(1..=(len - a.max(b)).min(32));
                let chunk = d[a..a + n].to_vec();
                d[b..b + n].copy_from_slice(&chunk);
            }
            7 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                let chunk = d[i..i + n].to_vec();
                for _ in 0..rng.random_range(1..=8) {
                    d.splice(i..i, chunk.iter().copied());
                }
            }
            _ => {
                let i = rng.random_range(0..=len);
                let text = [
                    "-1",
                    "0",
                    "1e308",
                    "-1e308",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "18446744073709551616",
                    "null",
                    "[]",
                    "{}",
                    "\"\"",
                    "999999999999",
                ][rng.random_range(0..13)];
                d.splice(i..i, text.bytes());
            }
        }
    }
    d
}

fn interesting_value(rng: &mut impl Rng) -> Value {
    match rng.random_range(0..16) {
        0 => Value::from(0),
        1 => Value::from(-1),
        2 => Value::from(u64::MAX),
        3 => Value::from(1e308),
        4 => Value::from(-1e308),
        5 => Value::from(1_000_000_000_000u64),
        6 => Value::from(0.5),
        7 => Value::Null,
        8 => Value::Bool(true),
        9 => Value::from(""),
        10 => Value::from("Infinity"),
        11 => Value::from("-Infinity"),
        12 => Value::Array(vec![]),
        13 => Value::Object(Default::default()),
        14 => Value::from(rng.next_u32() % 5000),
        _ => Value::from(vec![Value::from(1); rng.random_range(0..6)]),
    }
}

/// Collect the JSON pointers of every node.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            pointers(
                c,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                out,
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// One to three value-level mutations of a JSON document: replace a node by an interesting
/// value, remove a key, or scale a number.
pub fn mutate_json(v: &Value, rng: &mut impl Rng) -> Value {
    let mut v = v.clone();
    for _ in 0..rng.random_range(1..=3) {
        let mut ptrs = vec![];
        pointers(&v, String::new(), &mut ptrs);
        let p = &ptrs[rng.random_range(0..ptrs.len())];
        match rng.random_range(0..3) {
            0 => {
                if let Some(node) = v.pointer_mut(p) {
                    *node = interesting_value(rng);
                }
            }
            1 => {
                if let Some((parent, key)) = p.rsplit_once('/') {
                    if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                }
            }
            _ => {
                if let Some(node) = v.pointer_mut(p) {
                    if let Some(x) = node.as_f64() {
                        *node =
                            Value::from(x * [-1.0, 0.0, 1e6, 1e-6, 3.0][rng.random_range(0..5)]);
                    }
                }
            }
        }
    }
    v
}
