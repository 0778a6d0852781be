//! `tgdl`: parse the command line and hand over to [`tgdl::cli`].
//!
//! Everything (config, runtime, signals, exit codes) lives in the library so
//! that tests drive the same code the binary runs.

fn main() -> std::process::ExitCode {
    tgdl::cli::main()
}
