//! How many threads the CPU work uses, and giving cores back when other processes need them.
//!
//! Measured (issue 17): a 300-step MLP training took 18.8 s on 1 thread and 101.6 s on 2
//! while other builds shared the 2 cores, with 80 s of user time: each op's work is split
//! evenly over the threads and waits for the slowest, and a thread whose core is taken waits a
//! whole scheduler slice (candle's elementwise pool spins 25,000 rounds before parking).
//! [`setup`] sizes the pools by the cores the process may use and shortens that spin;
//! [`adapt`], called once per training step or network evaluation, lowers the number of
//! threads the own kernels split work over while other processes keep the cores busy. Results
//! do not depend on the thread count, so this changes speed only.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Threads the own kernels may use now (≤ the pool's size); see [`adapt`].
static ACTIVE: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The pool's size as set by [`setup`] (0 before).
static POOL: AtomicUsize = AtomicUsize::new(0);

/// The cores this process may run on: its CPU affinity mask, capped by a cgroup CPU quota
/// (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in v1), at least 1.
pub fn available_cores() -> usize {
    let mut n = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_os = "linux")]
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            n = (libc::CPU_COUNT(&set) as usize).max(1);
        }
    }
    if let Some(q) = cgroup_quota() {
        n = n.min(q.ceil().max(1.0) as usize);
    }
    n
}

/// The cgroup CPU quota in cores, if one is set.
fn cgroup_quota() -> Option<f64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    if let Some(s) = read("/sys/fs/cgroup/cpu.max") {
        let mut it = s.split_whitespace();
        let (q, p) = (
            it.next()?.parse::<f64>().ok()?,
            it.next()?.parse::<f64>().ok()?,
        );
        return (p > 0.0).then_some(q / p);
    }
    let q = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")?
        .trim()
        .parse::<f64>()
        .ok()?;
    let p = read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")?
        .trim()
        .parse::<f64>()
        .ok()?;
    (q > 0.0 && p > 0.0).then_some(q / p)
}

/// Size the thread pools: `requested` threads, else `RAYON_NUM_THREADS`, else
/// [`available_cores`]. Call once at start-up, before any CPU work (candle reads the thread
/// count from the environment when its pools start). Returns the number of threads.
pub fn setup(requested: Option<usize>) -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let n = requested
        .or(from_env)
        .unwrap_or_else(available_cores)
        .max(1);
    // SAFETY of set_var: called at start-up, before this process starts other threads.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // About a microsecond of spinning before a waiting worker parks (candle: 25,000).
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    // An existing global pool (built by a caller first) stays; its size is what counts.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    POOL.store(rayon::current_num_threads(), Ordering::Relaxed);
    rayon::current_num_threads()
}

/// Runs `f` on a worker of the thread pool (the calling thread waits), so that the parallel
/// loops inside it split their work from a worker, not from outside the pool: measured on the
/// demo's training (issue 17, CPU round 8), each parallel section entered from the main thread
/// paid a hand-over to a sleeping worker and then a second wake-up.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() <= 1 {
        return f();
    }
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("the scope ran the task")
}

/// The thread pool's size (what [`setup`] chose).
pub fn pool() -> usize {
    rayon::current_num_threads()
}

/// Threads the own CPU kernels split work over now: the current rayon pool's size, lowered by
/// [`adapt`] while the machine is busy.
pub fn active() -> usize {
    rayon::current_num_threads()
        .min(ACTIVE.load(Ordering::Relaxed))
        .max(1)
}

/// Called by the own kernels whenever they ask how many threads to use
/// ([`crate::kernels`]), so a training step or a sampler step adapts without being told.
///
/// Re-checks (at most every 20 ms) how many cores other processes keep busy, from the
/// kernel's count of runnable tasks (`/proc/loadavg`), and let the own kernels use only the
/// rest (at least one thread). Only when this process may use every online core, where that
/// count describes the cores we run on; a no-op before [`setup`] and elsewhere than Linux.
pub fn adapt() {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let pool = POOL.load(Ordering::Relaxed);
    if pool <= 1 {
        return;
    }
    {
        // Another thread checking right now decides for both.
        let Ok(mut last) = LAST.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(20)) {
            return;
        }
        *last = Some(Instant::now());
    }
    let cores = available_cores();
    if cores != online_cores() {
        return;
    }
    let Some(others) = others_running() else {
        return;
    };
    let free = cores.saturating_sub(others).max(1);
    ACTIVE.store(free.min(pool), Ordering::Relaxed);
}

/// Threads of other processes running or runnable now (what [`adapt`] leaves cores to);
/// `None` where the kernel does not say (not Linux).
pub fn others_running() -> Option<usize> {
    // The kernel's count includes this process's running threads (this one, and a worker
    // still finishing or spinning after the last parallel op).
    let running = runnable_tasks()?;
    Some(running.saturating_sub(own_running_threads().max(1)))
}

/// Runnable tasks on the machine now (the fourth field of `/proc/loadavg`, "running/total").
fn runnable_tasks() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

/// This process's threads in state R (running or runnable), from `/proc/self/task/*/stat`.
fn own_running_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (name) S …": the state follows the name's closing parenthesis.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("R")
        })
        .count()
}

fn online_cores() -> usize {
    #[cfg(target_os = "linux")]
    // SAFETY: sysconf takes a plain integer and returns -1 on error.
    unsafe {
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN);
        if n > 0 {
            return n as usize;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_and_load_are_read() {
        let n = available_cores();
        assert!(n >= 1 && n <= online_cores().max(1), "{n}");
        if cfg!(target_os = "linux") {
            assert!(runnable_tasks().is_some_and(|r| r >= 1));
            // This thread is running while it reads.
            assert!(own_running_threads() >= 1);
        }
        // Before setup, adapt changes nothing.
        adapt();
        assert!(active() >= 1 && active() <= rayon::current_num_threads());
    }
}
