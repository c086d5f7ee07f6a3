use clap::Parser;

fn main() {
    let cli = ecad_native::cli::Cli::parse();
    // A panic is a bug, but the user still gets one line and a non-zero exit, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("error: internal error (please report): {msg}");
    }));
    match std::panic::catch_unwind(|| ecad_native::cli::run(cli)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            // The exit status says what kind of failure it was (README, "Exit status").
            std::process::exit(ecad_native::Error::kind_of(e.as_ref()).exit_code());
        }
        Err(_) => std::process::exit(101),
    }
}
