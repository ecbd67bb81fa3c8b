fn main() -> std::process::ExitCode {
    pilot::cli::pilotctl::main()
}
