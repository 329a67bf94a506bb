//! The plugin configuration: `Config::from_json` on arbitrary bytes, with every credential
//! variable defined. A configuration that loads must answer its own lookups and list its models.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = Config::from_json(data, &|_| Some("x".into())) else {
        return;
    };
    for (i, vm) in config.virtual_models.iter().enumerate() {
        assert!(config.virtual_model(&vm.name).is_some(), "{}", vm.name);
        assert_eq!(config.virtual_model_index(&vm.name), Some(i));
        assert!(!config.is_unknown_virtual(&vm.name));
    }
    let listing = looper::openai::models::list(&config);
    assert!(serde_json::from_slice::<serde_json::Value>(&listing).is_ok());
});
