// `sqlx::migrate!` embeds the migrations at compile time; without this, adding a migration would
// not rebuild the crate and the new file would silently be missing from the binary.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/sqlite");
    println!("cargo:rerun-if-changed=../migrations/postgres");
}
