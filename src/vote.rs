//! Weighted plurality over extracted answers, shared by every pattern that votes.
//!
//! With log-odds weights `ln((K-1)·p/(1-p))` the weighted plurality is the optimal rule for
//! independent voters with symmetric errors (Nitzan–Paroush): when the best model's weight
//! exceeds the sum of the others, "follow the best model" wins, as it should.

/// One answer in a vote.
#[derive(Clone, Debug, PartialEq)]
pub struct Ballot {
    /// The normalised answer.
    pub answer: String,
    /// Vote weight (1.0 for an unweighted vote).
    pub weight: f64,
    /// Strength of the model that cast it; breaks ties towards the stronger model.
    pub strength: f64,
}

/// What a vote decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub answer: String,
    /// Total weight behind the winner.
    pub weight: f64,
    /// Total weight behind the runner-up (0 when there is none).
    pub runner_up: f64,
    /// Ballots for the winner.
    pub votes: usize,
    /// Index (into the ballots) of the strongest ballot for the winner: its response is the
    /// one to return.
    pub best_ballot: usize,
    /// The winner was chosen by strength among answers of equal weight.
    pub tie_broken: bool,
}

/// Relative tolerance under which two totals count as a tie.
const TIE_EPSILON: f64 = 1e-9;

/// The log-odds weight of a model of accuracy `p` among `options` possible answers, floored
/// at zero (a model no better than chance gets no say).
pub fn log_odds_weight(p: f64, options: usize) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    let k = options.max(2) as f64;
    ((k - 1.0) * p / (1.0 - p)).ln().max(0.0)
}

struct Total {
    answer: String,
    weight: f64,
    votes: usize,
    best_ballot: usize,
    best_strength: f64,
}

fn totals(ballots: &[Ballot]) -> Vec<Total> {
    let mut totals: Vec<Total> = Vec::new();
    for (i, ballot) in ballots.iter().enumerate() {
        let weight = if ballot.weight.is_finite() {
            ballot.weight.max(0.0)
        } else {
            0.0
        };
        match totals.iter_mut().find(|t| t.answer == ballot.answer) {
            Some(total) => {
                total.weight += weight;
                total.votes += 1;
                if ballot.strength > total.best_strength {
                    total.best_strength = ballot.strength;
                    total.best_ballot = i;
                }
            }
            None => totals.push(Total {
                answer: ballot.answer.clone(),
                weight,
                votes: 1,
                best_ballot: i,
                best_strength: ballot.strength,
            }),
        }
    }
    totals
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= TIE_EPSILON * a.abs().max(b.abs()).max(1.0)
}

/// The weighted plurality; ties go to the answer with the strongest supporter, then to the
/// answer seen first. `None` for no ballots.
pub fn plurality(ballots: &[Ballot]) -> Option<Outcome> {
    let totals = totals(ballots);
    let top = totals.iter().map(|t| t.weight).fold(f64::MIN, f64::max);
    let mut leaders: Vec<&Total> = totals.iter().filter(|t| same(t.weight, top)).collect();
    let tie_broken = leaders.len() > 1;
    // Stable: among equal strengths the first-seen answer stays first.
    crate::stable_sort::sort_by(&mut leaders, |a, b| {
        b.best_strength.total_cmp(&a.best_strength)
    });
    let winner = leaders.first()?;
    let runner_up = totals
        .iter()
        .filter(|t| t.answer != winner.answer)
        .map(|t| t.weight)
        .fold(0.0, f64::max);
    Some(Outcome {
        answer: winner.answer.clone(),
        weight: winner.weight,
        runner_up,
        votes: winner.votes,
        best_ballot: winner.best_ballot,
        tie_broken,
    })
}

/// True when ballots still to come, worth at most `pending_weight` together, cannot change
/// the winner: the leader is ahead of every other answer, including a new one, by more than
/// that.
pub fn is_decided(ballots: &[Ballot], pending_weight: f64) -> bool {
    let Some(outcome) = plurality(ballots) else {
        return false;
    };
    outcome.weight > outcome.runner_up.max(0.0) + pending_weight
        && !same(outcome.weight, outcome.runner_up + pending_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(answer: &str, weight: f64, strength: f64) -> Ballot {
        Ballot {
            answer: answer.to_string(),
            weight,
            strength,
        }
    }

    #[test]
    fn plain_majority() {
        let b = [
            ballot("A", 1.0, 0.0),
            ballot("B", 1.0, 0.0),
            ballot("A", 1.0, 0.0),
        ];
        let o = plurality(&b).unwrap();
        assert_eq!((o.answer.as_str(), o.votes, o.tie_broken), ("A", 2, false));
        assert_eq!(o.runner_up, 1.0);
        assert!(plurality(&[]).is_none());
    }

    #[test]
    fn the_best_model_wins_over_a_majority_of_weaker_ones() {
        // Accuracies 0.6, 0.7 and 0.8 on a binary question (notes §4.3): weights 0.41, 0.85
        // and 1.39; since 1.39 > 0.41 + 0.85 the best model must win alone.
        let w = |p| log_odds_weight(p, 2);
        assert!((w(0.6) - 0.405).abs() < 0.01 && (w(0.8) - 1.386).abs() < 0.01);
        let b = [
            ballot("B", w(0.6), 0.6),
            ballot("B", w(0.7), 0.7),
            ballot("A", w(0.8), 0.8),
        ];
        let o = plurality(&b).unwrap();
        assert_eq!(o.answer, "A");
        assert_eq!(o.best_ballot, 2);
    }

    #[test]
    fn more_options_make_each_vote_count_more() {
        assert!(log_odds_weight(0.6, 4) > log_odds_weight(0.6, 2));
        assert_eq!(log_odds_weight(0.25, 4), 0.0, "chance level gets no say");
        assert_eq!(log_odds_weight(0.1, 4), 0.0);
        assert!(log_odds_weight(1.0, 4).is_finite());
    }

    #[test]
    fn ties_go_to_the_stronger_model_then_the_first_seen() {
        let b = [ballot("A", 1.0, 0.5), ballot("B", 1.0, 0.9)];
        let o = plurality(&b).unwrap();
        assert_eq!(o.answer, "B");
        assert!(o.tie_broken);
        let b = [ballot("A", 1.0, 0.5), ballot("B", 1.0, 0.5)];
        assert_eq!(plurality(&b).unwrap().answer, "A");
    }

    #[test]
    fn the_returned_ballot_is_the_strongest_for_the_winner() {
        let b = [
            ballot("A", 1.0, 0.2),
            ballot("A", 1.0, 0.9),
            ballot("B", 1.0, 0.5),
        ];
        assert_eq!(plurality(&b).unwrap().best_ballot, 1);
    }

    #[test]
    fn decided_only_when_pending_votes_cannot_change_the_winner() {
        let b = [
            ballot("A", 1.0, 0.0),
            ballot("A", 1.0, 0.0),
            ballot("B", 1.0, 0.0),
        ];
        assert!(
            !is_decided(&b, 1.0),
            "2 vs 1 with one vote pending can still tie"
        );
        assert!(is_decided(&b, 0.5));
        assert!(!is_decided(&b[..1], 1.0));
        assert!(is_decided(&b[..2], 1.0), "2 vs 0 with one vote pending");
        assert!(!is_decided(&[], 0.0));
    }

    #[test]
    fn bad_weights_do_not_poison_the_vote() {
        let b = [
            ballot("A", f64::NAN, 0.0),
            ballot("B", 1.0, 0.0),
            ballot("A", -5.0, 0.0),
        ];
        assert_eq!(plurality(&b).unwrap().answer, "B");
    }
}
