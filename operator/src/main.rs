//! `gost-operator`: watches GostService and GostChain resources and injects the gost sidecar.

fn main() {
    eprintln!("gost-operator: not wired yet");
    std::process::exit(2);
}
