// `sqlx::migrate!` embeds the daemon's migrations at compile time; without this, adding a
// migration would not rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
