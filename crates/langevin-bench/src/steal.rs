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

#[cfg(test)]
mod tests {
    use super::*;

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
