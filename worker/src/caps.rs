//! Capabilities a worker detects about its machine.

use std::collections::BTreeMap;

/// `os`, `arch`, `cpus`, `memory_mb` of this machine, named like Rust's
/// `std::env::consts` (`linux`, `macos`, `windows`; `x86_64`, `aarch64`).
pub fn detect() -> BTreeMap<String, String> {
    let mut caps = BTreeMap::new();
    caps.insert("os".into(), std::env::consts::OS.into());
    caps.insert("arch".into(), std::env::consts::ARCH.into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    caps.insert("cpus".into(), cpus.to_string());
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    caps.insert(
        "memory_mb".into(),
        (sys.total_memory() / (1024 * 1024)).to_string(),
    );
    caps
}

pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_os_and_arch() {
        let c = super::detect();
        assert_eq!(c["os"], std::env::consts::OS);
        assert!(c["cpus"].parse::<usize>().unwrap() >= 1);
        assert!(c["memory_mb"].parse::<u64>().unwrap() > 0);
    }
}
