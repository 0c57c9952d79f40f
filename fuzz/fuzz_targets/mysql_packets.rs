//! What an app sends the dbproxy: MySQL packets (any framing, chunks over 16 MB announced and
//! not sent), then the login and command payloads parsed as the dbproxy parses them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mysql_common::packets::HandshakeResponse;
use mysql_common::proto::MyDeserialize;
use mysql_common::io::ParseBuf;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    // Timers on: a large packet waits (bounded) for room in the shared budget.
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let budget = dbproxy::packet::PacketBudget::new(2 << 20);
        let mut reader =
            dbproxy::packet::PacketReader::new(data, 1 << 20).with_budget(budget);
        for _ in 0..64 {
            let Ok(packet) = reader.read().await else { break };
            let payload = packet.payload;
            let _ = HandshakeResponse::deserialize((), &mut ParseBuf(&payload));
            if let Some((&command, rest)) = payload.split_first() {
                if command == 0x03 || command == 0x16 {
                    let sql = String::from_utf8_lossy(rest);
                    let _ = dbproxy::policy::classify(&sql);
                }
            }
        }
    });
});
