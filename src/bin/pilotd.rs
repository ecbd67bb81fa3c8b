fn main() -> std::process::ExitCode {
    pilot::cli::pilotd::main()
}
