//! Installs the npm SMSC's dependencies (`npm ci` in this directory) when
//! `node_modules` lacks them, once across every test and test binary that
//! asks at the same time (an OS lock on `.install.lock`: two `npm ci` runs in
//! one directory corrupt each other's files). Included with `#[path]` by the
//! tests that start the SMSC.

use std::path::Path;

/// Makes sure `dir/node_modules/smpp` is installed; panics naming the
/// directory when `npm ci` fails.
pub fn install_smsc(dir: &Path) {
    if dir.join("node_modules/smpp/package.json").is_file() {
        return;
    }
    let lock = std::fs::File::create(dir.join(".install.lock")).expect("create the install lock");
    lock.lock().expect("take the install lock");
    if !dir.join("node_modules/smpp/package.json").is_file() {
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci in {} failed", dir.display());
    }
}
