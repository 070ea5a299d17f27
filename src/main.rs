fn main() {
    println!("imsctl");
}
