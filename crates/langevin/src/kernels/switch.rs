//! A run-time switch read once from an environment variable and overridable from code (the
//! GPU parity run compares both settings in one process): channels-last activations, the
//! channels-last group-norm form, CUDA graphs.
use std::sync::atomic::{AtomicU8, Ordering};

pub(crate) struct EnvSwitch {
    var: &'static str,
    /// The setting for the variable's value (`None`: unset).
    parse: fn(Option<&str>) -> bool,
    /// 0: not read yet, 1: on, 2: off.
    state: AtomicU8,
}

impl EnvSwitch {
    pub(crate) const fn new(var: &'static str, parse: fn(Option<&str>) -> bool) -> Self {
        Self {
            var,
            parse,
            state: AtomicU8::new(0),
        }
    }

    pub(crate) fn get(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let on = (self.parse)(std::env::var(self.var).ok().as_deref());
                self.set(on);
                on
            }
            s => s == 1,
        }
    }

    pub(crate) fn set(&self, on: bool) {
        self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }
}

/// On unless the variable is "0".
pub(crate) fn unless_zero(v: Option<&str>) -> bool {
    v != Some("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variable decides until the code sets the switch; then the code does.
    #[test]
    fn reads_the_variable_once_then_obeys_set() {
        static S: EnvSwitch = EnvSwitch::new("LANGEVIN_TEST_SWITCH_UNSET", unless_zero);
        assert!(S.get());
        S.set(false);
        assert!(!S.get());
        S.set(true);
        assert!(S.get());
        static R: EnvSwitch = EnvSwitch::new("PATH", |v| v.is_some_and(|v| v == "reg"));
        assert!(!R.get());
        assert!(unless_zero(None) && unless_zero(Some("1")) && !unless_zero(Some("0")));
    }
}
