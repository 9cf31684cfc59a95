//! `gf`: the Gigafactory operator CLI. Parses arguments and hands over to the library,
//! which loads the configuration, sets up logging and the shutdown signal.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gf_cli::allocator::configure();
    let cli = gf_cli::Cli::parse();
    let runtime = gf_cli::runtime(&cli).expect("tokio runtime");
    match runtime.block_on(gf_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
