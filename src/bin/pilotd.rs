fn main() -> std::process::ExitCode {
    if cfg!(feature = "simulated-clock") {
        eprintln!(
            "pilotd: built with the simulated-clock feature (for the simulation only): its \
             WireGuard timers would never fire; build without it"
        );
        return std::process::ExitCode::from(2);
    }
    pilot::cli::pilotd::main()
}
