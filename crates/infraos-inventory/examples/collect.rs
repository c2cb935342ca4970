//! Prints this machine's inventory as JSON, the way an agent would publish it:
//! `cargo run -p infraos-inventory --example collect`.

fn main() -> Result<(), serde_json::Error> {
    let inventory = infraos_inventory::collect(&infraos_inventory::Options::default());
    println!("{}", serde_json::to_string_pretty(&inventory)?);
    println!(
        "fingerprint: {:016x}",
        infraos_inventory::fingerprint(&inventory)
    );
    Ok(())
}
