//! CPU time stolen by the hypervisor while a workload ran, from `/proc/stat`: on this
//! project's VM a third of the CPU was taken away in some minutes (CPU round 15 in
//! docs/benchmarks.md), which moved the ratios by up to 2×, so each row says how much.

/// The machine's CPU time counters: (all time, stolen time), in clock ticks.
#[derive(Clone, Copy)]
pub struct CpuTimes(u64, u64);

impl CpuTimes {
    /// Now, from `/proc/stat`; `None` where the kernel does not say (not Linux).
    pub fn now() -> Option<Self> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of the CPU time since `self` that was stolen, in percent.
    pub fn stolen_since(self, later: Self) -> Option<f64> {
        let total = later.0.checked_sub(self.0)?;
        let stolen = later.1.checked_sub(self.1)?;
        (total > 0).then(|| 100.0 * stolen as f64 / total as f64)
    }
}

/// The first line of `/proc/stat`: "cpu user nice system idle iowait irq softirq steal …"
/// (guest time is already counted in user).
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 8).then(|| CpuTimes(v.iter().sum(), v[7]))
}

/// The share of the CPU time stolen since `start` until now, in percent (`None` where the
/// kernel does not say).
pub fn since(start: Option<CpuTimes>) -> Option<f64> {
    start
        .zip(CpuTimes::now())
        .and_then(|(a, b)| a.stolen_since(b))
}

/// Which of the timed rounds count, given each round's stolen share (percent): the first
/// `wanted` under `max_steal` if there are that many, else the `wanted` least stolen (the
/// earlier on ties), in their timing order.
pub fn kept_rounds(stolen: &[f64], wanted: usize, max_steal: f64) -> Vec<usize> {
    let clean: Vec<usize> = (0..stolen.len())
        .filter(|&i| stolen[i] <= max_steal)
        .take(wanted)
        .collect();
    if clean.len() == wanted {
        return clean;
    }
    let mut by_steal: Vec<usize> = (0..stolen.len()).collect();
    by_steal.sort_by(|&a, &b| stolen[a].total_cmp(&stolen[b]).then(a.cmp(&b)));
    by_steal.truncate(wanted);
    by_steal.sort_unstable();
    by_steal
}

/// Whether another round should be timed: fewer than `wanted` rounds so far under `max_steal`,
/// and fewer than `budget` rounds timed.
pub fn round_again(stolen: &[f64], wanted: usize, max_steal: f64, budget: usize) -> bool {
    stolen.len() < budget && stolen.iter().filter(|&&s| s <= max_steal).count() < wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_under_steal_are_kept_and_stolen_ones_retimed() {
        // Three wanted, at most 3% stolen: rounds 1 and 3 are retimed, 0, 2, 4 kept.
        let s = [0.5, 12.0, 2.0, 8.0, 1.0];
        assert_eq!(kept_rounds(&s, 3, 3.0), vec![0, 2, 4]);
        assert!(round_again(&s[..4], 3, 3.0, 9));
        assert!(!round_again(&s, 3, 3.0, 9));
        // The budget spent with two clean rounds: the three least stolen, in timing order.
        let s = [20.0, 1.0, 9.0, 15.0, 0.0, 30.0];
        assert!(!round_again(&s, 3, 3.0, 6));
        assert_eq!(kept_rounds(&s, 3, 3.0), vec![1, 2, 4]);
        // Ties go to the earlier round.
        assert_eq!(kept_rounds(&[5.0, 5.0, 5.0], 2, 3.0), vec![0, 1]);
    }

    #[test]
    fn steal_share_is_read_from_the_cpu_line() {
        let a = parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse("cpu  160 0 60 900 10 0 5 65 0 0\n").unwrap();
        // 200 ticks in all, 30 of them stolen.
        assert_eq!(a.stolen_since(b), Some(15.0));
        assert!(parse("intr 1 2 3\n").is_none());
        assert!(parse("cpu 1 2 3\n").is_none());
    }
}
