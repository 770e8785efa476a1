//! What several test files share.

use std::sync::OnceLock;

use azr::config::SandboxConfig;
use azr::sandbox::Sandbox;

/// One sandbox per test binary, with a 2 s limit so endless programs end quickly.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config = SandboxConfig::default();
        config.limits.timeout_ms = 2_000;
        Sandbox::new(&config).expect("sandbox")
    })
}
