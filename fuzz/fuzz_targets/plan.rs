//! A planner's reply: `plan::validate` against the two workflows recipes of
//! `filters/auto.json`. An accepted plan obeys every rule of the recipe; a refused one says why,
//! in at most 10 lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::config::{Algorithm, Config, WorkflowsRecipe};
use looper::looper::plan::{find_cycle, validate};
use std::sync::OnceLock;

fn recipes() -> &'static [WorkflowsRecipe] {
    static RECIPES: OnceLock<Vec<WorkflowsRecipe>> = OnceLock::new();
    RECIPES.get_or_init(|| {
        let json = include_str!("../../filters/auto.json");
        let config = match Config::from_json(json.as_bytes(), &|_| Some("x".into())) {
            Ok(c) => c,
            Err(e) => panic!("filters/auto.json does not load: {e}"),
        };
        let recipes: Vec<WorkflowsRecipe> = config
            .recipes
            .iter()
            .filter_map(|r| match &r.algorithm {
                Algorithm::Workflows(w) => Some(w.clone()),
                _ => None,
            })
            .collect();
        assert!(
            !recipes.is_empty(),
            "filters/auto.json has no workflows recipe"
        );
        recipes
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for recipe in recipes() {
        match validate(&text, recipe) {
            Ok(steps) => {
                assert!(!steps.is_empty() && steps.len() <= recipe.max_steps);
                for (i, step) in steps.iter().enumerate() {
                    assert!(valid_id(&step.id), "{:?}", step.id);
                    assert!(steps.iter().skip(i + 1).all(|s| s.id != step.id));
                    assert!(step.worker < recipe.workers.len());
                    assert!(!step.instruction.trim().is_empty());
                    assert!(step.instruction.chars().count() <= recipe.max_instruction_chars);
                    assert!(step.after.iter().all(|&j| j < steps.len() && j != i));
                }
                assert_eq!(find_cycle(&steps), None);
            }
            Err(errors) => assert!((1..=10).contains(&errors.len()), "{errors:?}"),
        }
    }
});
