//! Running the `chaos` binary from its integration tests.

use std::io::Read as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `chaos` with `args`, killing it if it has not finished within `limit`; returns
/// its exit status and everything it printed. Its output is read while it runs, so a
/// long report cannot fill the pipe and stall it.
pub fn run_chaos(
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
    limit: Duration,
) -> anyhow::Result<(ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("chaos did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().expect("stdout reader")?;
    Ok((status, out))
}

/// A temporary path as an argument (temporary directories have UTF-8 names here).
pub fn utf8(path: &std::path::Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}
