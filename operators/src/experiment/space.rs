//! Hyperparameter search spaces and the algorithms that propose trials from them: grid search
//! over lists, random search over ranges, and differential evolution (DE/rand/1/bin).
//!
//! A trial's parameters are [`OptionValue`]s by name, the same values `CREATE MODEL ...
//! OPTIONS (...)` and [`crate::ml::ModelBuilder`] take.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ml::OptionValue;

/// One trial's hyperparameters, by option name.
pub type Params = BTreeMap<String, OptionValue>;

/// The values one hyperparameter may take.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// One of these values (grid search enumerates them).
    Choice(Vec<OptionValue>),
    /// A real number drawn uniformly from `[low, high]`.
    Uniform {
        /// Smallest value.
        low: f64,
        /// Largest value.
        high: f64,
    },
    /// A positive real number whose logarithm is uniform on `[ln low, ln high]`.
    LogUniform {
        /// Smallest value, above 0.
        low: f64,
        /// Largest value.
        high: f64,
    },
    /// An integer from `low` to `high`, both included.
    Int {
        /// Smallest value.
        low: i64,
        /// Largest value.
        high: i64,
    },
}

impl Domain {
    fn check(&self, name: &str) -> Result<(), String> {
        let bad = |why: &str| Err(format!("search space parameter '{name}': {why}"));
        match *self {
            Domain::Choice(ref values) if values.is_empty() => bad("an empty list of choices"),
            Domain::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low <= high) =>
            {
                bad("uniform needs finite low <= high")
            }
            Domain::LogUniform { low, high } if !(low > 0.0 && high.is_finite() && low <= high) => {
                bad("log_uniform needs 0 < low <= high")
            }
            Domain::Int { low, high } if low > high => bad("int needs low <= high"),
            _ => Ok(()),
        }
    }

    /// The value at unit coordinate `u` in `[0, 1]`: the encoding differential evolution
    /// searches in.
    fn at(&self, u: f64) -> OptionValue {
        let u = u.clamp(0.0, 1.0);
        match self {
            Domain::Choice(values) => {
                values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone()
            }
            Domain::Uniform { low, high } => OptionValue::Num(low + u * (high - low)),
            Domain::LogUniform { low, high } => {
                // exp(ln x) may land a rounding error outside the bounds.
                OptionValue::Num(
                    (low.ln() + u * (high.ln() - low.ln()))
                        .exp()
                        .clamp(*low, *high),
                )
            }
            Domain::Int { low, high } => {
                let span = (high - low) as f64;
                OptionValue::Num((*low as f64 + (u * span).round()).min(*high as f64))
            }
        }
    }

    /// The unit coordinate of `value` (the inverse of [`Domain::at`]).
    fn coordinate(&self, value: &OptionValue) -> f64 {
        let num = match value {
            OptionValue::Num(x) => *x,
            _ => 0.0,
        };
        let scale = |x: f64, low: f64, high: f64| {
            if high > low {
                ((x - low) / (high - low)).clamp(0.0, 1.0)
            } else {
                0.5
            }
        };
        match self {
            Domain::Choice(values) => {
                let i = values.iter().position(|v| v == value).unwrap_or(0);
                (i as f64 + 0.5) / values.len() as f64
            }
            Domain::Uniform { low, high } => scale(num, *low, *high),
            Domain::LogUniform { low, high } => scale(num.max(*low).ln(), low.ln(), high.ln()),
            Domain::Int { low, high } => scale(num, *low as f64, *high as f64),
        }
    }
}

/// Named hyperparameter domains, iterated in name order so that trials are reproducible.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchSpace {
    params: BTreeMap<String, Domain>,
}

impl SearchSpace {
    /// A space from named domains; an empty space or a malformed domain is an error.
    pub fn new(params: impl IntoIterator<Item = (String, Domain)>) -> Result<Self, String> {
        let params: BTreeMap<_, _> = params.into_iter().collect();
        if params.is_empty() {
            return Err("a search space needs at least one parameter".into());
        }
        for (name, domain) in &params {
            domain.check(name)?;
        }
        Ok(Self { params })
    }

    /// The domain of `name`, if it is searched.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.params.get(name)
    }

    /// The searched parameters and their domains, by name.
    pub fn domains(&self) -> impl Iterator<Item = (&String, &Domain)> {
        self.params.iter()
    }

    /// Every combination of the choices, the last parameter (by name) varying fastest; each
    /// parameter must be a [`Domain::Choice`].
    pub fn grid(&self) -> Result<Vec<Params>, String> {
        let mut trials = vec![Params::new()];
        for (name, domain) in &self.params {
            let Domain::Choice(values) = domain else {
                return Err(format!(
                    "grid search needs a list of values for '{name}'; ranges need random or \
                     evolutionary search"
                ));
            };
            trials = trials
                .into_iter()
                .flat_map(|t| {
                    values.iter().map(move |v| {
                        let mut t = t.clone();
                        t.insert(name.clone(), v.clone());
                        t
                    })
                })
                .collect();
        }
        Ok(trials)
    }

    /// `count` independent draws, reproducible from `seed`.
    pub fn random(&self, count: usize, seed: u64) -> Vec<Params> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count)
            .map(|_| self.decode(&self.params.keys().map(|_| rng.random()).collect::<Vec<_>>()))
            .collect()
    }

    fn decode(&self, point: &[f64]) -> Params {
        self.params
            .iter()
            .zip(point)
            .map(|((name, domain), &u)| (name.clone(), domain.at(u)))
            .collect()
    }

    fn encode(&self, params: &Params) -> Vec<f64> {
        self.params
            .iter()
            .map(|(name, domain)| {
                params
                    .get(name)
                    .map_or(0.5, |value| domain.coordinate(value))
            })
            .collect()
    }
}

/// Differential evolution (DE/rand/1/bin) over a [`SearchSpace`]: each generation breeds one
/// child per member of the population from three others, and a child replaces its parent
/// when it scores better.
#[derive(Debug, Clone, PartialEq)]
pub struct DifferentialEvolution {
    /// Members of each generation (at least 4).
    pub population: usize,
    /// Differential weight F, typically 0.5-0.9.
    pub mutation: f64,
    /// Crossover rate CR in `[0, 1]`.
    pub crossover: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl DifferentialEvolution {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.population < 4 {
            return Err(format!(
                "evolutionary search needs a population of at least 4, not {}",
                self.population
            ));
        }
        if !(0.0..=2.0).contains(&self.mutation) || !(0.0..=1.0).contains(&self.crossover) {
            return Err(format!(
                "mutation must be in [0, 2] and crossover in [0, 1] (got {} and {})",
                self.mutation, self.crossover
            ));
        }
        Ok(())
    }

    /// Generation 0: random members.
    pub fn initial(&self, space: &SearchSpace) -> Vec<Params> {
        space.random(self.population, self.seed)
    }

    /// The children of a scored generation (`scores[i]` belongs to `members[i]`, higher is
    /// better); `generation` numbers the children's generation, so that each is reproducible.
    pub fn breed(&self, space: &SearchSpace, members: &[Params], generation: u64) -> Vec<Params> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let points: Vec<Vec<f64>> = members.iter().map(|m| space.encode(m)).collect();
        let dims = space.params.len();
        (0..points.len())
            .map(|i| {
                let mut pick = |taken: &[usize]| loop {
                    let j = rng.random_range(0..points.len());
                    if j != i && !taken.contains(&j) {
                        break j;
                    }
                };
                let a = pick(&[]);
                let b = pick(&[a]);
                let c = pick(&[a, b]);
                let forced = rng.random_range(0..dims);
                let child: Vec<f64> = (0..dims)
                    .map(|d| {
                        if d == forced || rng.random::<f64>() < self.crossover {
                            (points[a][d] + self.mutation * (points[b][d] - points[c][d]))
                                .clamp(0.0, 1.0)
                        } else {
                            points[i][d]
                        }
                    })
                    .collect();
                space.decode(&child)
            })
            .collect()
    }

    /// The next generation: each child that scored at least as well as its parent replaces it
    /// (scores: higher is better).
    pub fn select(parents: &[(Params, f64)], children: &[(Params, f64)]) -> Vec<(Params, f64)> {
        parents
            .iter()
            .zip(children)
            .map(|(p, c)| if c.1 >= p.1 { c.clone() } else { p.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(v: &OptionValue) -> f64 {
        match v {
            OptionValue::Num(x) => *x,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grid_enumerates_the_classic_fashion_mnist_demo() {
        let space = SearchSpace::new([
            (
                "learning_rate".to_string(),
                Domain::Choice(vec![OptionValue::Num(0.001), OptionValue::Num(0.005)]),
            ),
            (
                "dropout".to_string(),
                Domain::Choice(vec![
                    OptionValue::Num(0.45),
                    OptionValue::Num(0.5),
                    OptionValue::Num(0.55),
                ]),
            ),
        ])
        .unwrap();
        let trials = space.grid().unwrap();
        assert_eq!(trials.len(), 6);
        let pairs: Vec<(f64, f64)> = trials
            .iter()
            .map(|t| (num(&t["dropout"]), num(&t["learning_rate"])))
            .collect();
        assert_eq!(
            pairs,
            [
                (0.45, 0.001),
                (0.45, 0.005),
                (0.5, 0.001),
                (0.5, 0.005),
                (0.55, 0.001),
                (0.55, 0.005)
            ]
        );
        let ranged = SearchSpace::new([(
            "learning_rate".to_string(),
            Domain::LogUniform {
                low: 1e-4,
                high: 1e-1,
            },
        )])
        .unwrap();
        assert!(ranged.grid().unwrap_err().contains("learning_rate"));
    }

    #[test]
    fn random_search_stays_in_bounds_and_repeats_with_its_seed() {
        let space = SearchSpace::new([
            (
                "lr".to_string(),
                Domain::LogUniform {
                    low: 1e-4,
                    high: 1e-1,
                },
            ),
            (
                "dropout".to_string(),
                Domain::Uniform {
                    low: 0.1,
                    high: 0.5,
                },
            ),
            ("units".to_string(), Domain::Int { low: 16, high: 64 }),
            (
                "optimizer".to_string(),
                Domain::Choice(vec!["adam".into(), "sgd".into()]),
            ),
        ])
        .unwrap();
        let trials = space.random(400, 7);
        assert_eq!(trials, space.random(400, 7));
        assert_ne!(trials, space.random(400, 8));
        let lrs: Vec<f64> = trials.iter().map(|t| num(&t["lr"])).collect();
        assert!(lrs.iter().all(|&x| (1e-4..=1e-1).contains(&x)));
        // Log-uniform: about a third of the draws in each decade.
        let low_decade = lrs.iter().filter(|&&x| x < 1e-3).count();
        assert!((90..=180).contains(&low_decade), "{low_decade}");
        for t in &trials {
            assert!((0.1..=0.5).contains(&num(&t["dropout"])));
            let units = num(&t["units"]);
            assert!(units.fract() == 0.0 && (16.0..=64.0).contains(&units));
        }
        let adam = trials
            .iter()
            .filter(|t| t["optimizer"] == "adam".into())
            .count();
        assert!((150..=250).contains(&adam), "{adam}");
    }

    #[test]
    fn bad_spaces_are_refused() {
        assert!(SearchSpace::new([]).is_err());
        let err = SearchSpace::new([(
            "lr".to_string(),
            Domain::LogUniform {
                low: 0.0,
                high: 1.0,
            },
        )])
        .unwrap_err();
        assert!(err.contains("'lr'"), "{err}");
        assert!(SearchSpace::new([("x".to_string(), Domain::Choice(vec![]))]).is_err());
        let de = DifferentialEvolution {
            population: 3,
            mutation: 0.5,
            crossover: 0.9,
            seed: 1,
        };
        assert!(de.check().unwrap_err().contains("at least 4"));
    }

    #[test]
    fn differential_evolution_climbs_towards_the_optimum() {
        // Maximise -(x - 0.3)^2 - (y - 2)^2 over x in [-1, 1], y in [0, 5].
        let space = SearchSpace::new([
            (
                "x".to_string(),
                Domain::Uniform {
                    low: -1.0,
                    high: 1.0,
                },
            ),
            (
                "y".to_string(),
                Domain::Uniform {
                    low: 0.0,
                    high: 5.0,
                },
            ),
        ])
        .unwrap();
        let score = |p: &Params| -(num(&p["x"]) - 0.3).powi(2) - (num(&p["y"]) - 2.0).powi(2);
        let de = DifferentialEvolution {
            population: 12,
            mutation: 0.6,
            crossover: 0.9,
            seed: 5,
        };
        de.check().unwrap();
        let mut scored: Vec<(Params, f64)> = de
            .initial(&space)
            .into_iter()
            .map(|p| (p.clone(), score(&p)))
            .collect();
        let best_at_start = scored.iter().map(|s| s.1).fold(f64::MIN, f64::max);
        for generation in 1..=30 {
            let members: Vec<Params> = scored.iter().map(|s| s.0.clone()).collect();
            let children: Vec<(Params, f64)> = de
                .breed(&space, &members, generation)
                .into_iter()
                .map(|p| (p.clone(), score(&p)))
                .collect();
            assert_eq!(
                de.breed(&space, &members, generation),
                children.iter().map(|c| c.0.clone()).collect::<Vec<_>>()
            );
            scored = DifferentialEvolution::select(&scored, &children);
        }
        let best = scored.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert!(best.1 > best_at_start);
        assert!(best.1 > -1e-3, "best {:?} scores {}", best.0, best.1);
    }
}
