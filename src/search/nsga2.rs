//! NSGA-II on bit-string genomes, with the semantics of pymoo 0.6.1.3 as ECAD configures it
//! (`NSGA2(pop_size, sampling, crossover=PointCrossover(prob=0.9, n_points=4),
//! mutation=BitflipMutation(prob=0.05))`, checked against pymoo's source at tag `0.6.1.3`).
//!
//! Semantics (the file of each rule in pymoo in brackets):
//!
//! - **Dominance** (`util/dominator.py`): `a` dominates `b` when it is no worse in every
//!   objective and better in one (both minimised).
//! - **Non-dominated sorting** (`util/nds/fast_non_dominated_sort.py`): Deb's fast sort. The
//!   first front lists its members in index order, later fronts in order of discovery. Sorting
//!   stops once `n_stop_if_ranked` individuals are ranked.
//! - **Crowding distance** (`operators/survival/rank_and_crowding/metrics.py`,
//!   `calc_crowding_distance`, `filter_out_duplicates=False`): a front of ≤ 2 points gets ∞
//!   everywhere. Otherwise each objective is sorted stably; the distance of a point is the sum
//!   over objectives of (gap to the previous + gap to the next sorted value) / (max − min),
//!   divided by the number of objectives; the first and last sorted points have an infinite gap
//!   on their open side. An objective whose values are all equal contributes 0 to every point
//!   (pymoo divides by NaN and zeroes the NaNs), extremes included.
//! - **Survival** (`core/survival.py` + `RankAndCrowding`): individuals with a constraint
//!   violation CV > 0 are set aside; the feasible ones are ranked front by front; a front that
//!   fits is taken whole (in front order); the front that overflows is sorted by descending
//!   crowding distance with ties in random order (pymoo's `randomized_argsort`: a random
//!   permutation, then a sort) and cut. Rank and crowding are recorded on every individual of
//!   every front that was looked at (the crowding of the split front is computed over the
//!   whole front). Remaining places go to infeasible individuals by ascending CV (ties: stable,
//!   pymoo uses numpy's unstable default sort there).
//! - **Selection** (`operators/selection/tournament.py`, `binary_tournament` in
//!   `algorithms/moo/nsga2.py`, `tournament_type='comp_by_dom_and_crowding'`): for `n`
//!   matings, `4n` contestants are taken from concatenated random permutations of the
//!   population and paired. In a pair, if either is infeasible the smaller CV wins (a random
//!   one on equal CV); otherwise a dominating individual wins; otherwise the larger crowding
//!   distance wins, and on equal crowding distance (∞ = ∞ included) a random one.
//! - **Crossover** (`core/crossover.py`, `operators/crossover/pntx.py`, `util/misc.py`
//!   `crossover_mask`): per mating, with probability `prob` (drawn `u < prob`) the two
//!   parents are crossed, otherwise copied. `n_points` distinct cut points are the first
//!   `n_points` of a random permutation of `1..n_var`, sorted, with `n_var` appended; the
//!   ranges `[r0, r1)`, `[r2, r3)`, … are swapped between the two children (child 0 is parent 0
//!   with those ranges from parent 1, child 1 the reverse). The offspring of `m` matings come
//!   out as all first children, then all second children (pymoo's `(2, m, n_var)` reshape).
//! - **Mutation** (`core/mutation.py`, `operators/mutation/bitflip.py`):
//!   `BitflipMutation(prob=0.05)` mutates an individual with probability `prob` (drawn
//!   `u ≤ prob`); a mutated individual flips each bit independently with probability
//!   `prob_var` (drawn `u < prob_var`), by default `min(0.5, 1 / n_var)`. So `prob` is *not*
//!   a per-bit rate: about 5 % of the offspring get about one flipped bit each.
//! - **Repair** (`core/infill.py`): applied after mutation, before duplicate elimination. Here
//!   it sets every bit of step 0 to *recompute* (the cache is empty at step 0, so those bits
//!   have no effect; forcing them keeps equivalent schedules from being distinct genomes).
//! - **Duplicate elimination** (`core/duplicate.py`, `DefaultDuplicateElimination`): a new
//!   offspring is dropped when it equals an earlier offspring of the same batch, a member of
//!   the population, or an offspring already accepted this generation.
//! - **Mating loop** (`core/infill.py`, `core/mating.py`): while fewer than `n_offsprings`
//!   offspring exist: `ceil(remaining / 2)` matings → crossover → mutation → repair →
//!   duplicate elimination → keep the first `remaining`; give up after 100 rounds (so a
//!   generation may have fewer offspring).
//! - **(μ+λ)**: the next population is the survival of population + offspring
//!   (`algorithms/base/genetic.py`), with `n_offsprings = pop_size`. The initial population is
//!   the seeds (repaired, deduplicated), all kept (`n_survive = len`, NSGA2's
//!   `advance_after_initial_infill`).
//! - **Constraint** (ECAD's `PixArtCachingScheduleProblem`): `G = min_diff −
//!   Hamming(x, all-recompute) ≤ 0` with `min_diff = 1`, `CV = max(0, G)`: only the
//!   no-cache schedule is infeasible.
//!
//! The random stream is this crate's ([`SearchRng`]), not numpy's: the same rules with a
//! different stream, so a seed does not reproduce a pymoo run, but the algorithm is pymoo's.

use super::rng::SearchRng;

/// A schedule genome in ECAD's flattening order (`Schedule::to_genome`); `true` = recompute.
pub type Genome = Vec<bool>;

/// An evaluated member of the population.
#[derive(Clone, Debug, PartialEq)]
pub struct Individual {
    /// The archive id of the evaluation.
    pub id: u64,
    pub genome: Genome,
    /// Objectives, both minimised: `[cost, quality]`.
    pub f: [f64; 2],
    /// Constraint violation (0 = feasible).
    pub cv: f64,
    /// Non-domination rank from the last survival (`None`: never ranked, e.g. infeasible).
    pub rank: Option<usize>,
    /// Crowding distance from the last survival (may be ∞).
    pub crowding: f64,
}

impl Individual {
    pub fn feasible(&self) -> bool {
        self.cv <= 0.0
    }
}

/// GA settings (ECAD's defaults in [`GaParams::ecad`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GaParams {
    pub pop_size: usize,
    pub crossover_prob: f64,
    pub n_points: usize,
    /// Per-individual mutation probability (pymoo's `prob`).
    pub mutation_prob: f64,
    /// Per-bit flip probability inside a mutated individual (`None`: `min(0.5, 1/n_var)`).
    pub mutation_prob_var: Option<f64>,
    /// Bits at the start of the genome forced to `true` by the repair (one step's worth).
    pub forced_prefix: usize,
    /// Mating rounds before giving up on filling the offspring.
    pub max_mating_rounds: usize,
}

impl GaParams {
    /// ECAD's settings for a genome whose first `bits_per_step` bits are step 0.
    pub fn ecad(pop_size: usize, bits_per_step: usize) -> Self {
        GaParams {
            pop_size,
            crossover_prob: 0.9,
            n_points: 4,
            mutation_prob: 0.05,
            mutation_prob_var: None,
            forced_prefix: bits_per_step,
            max_mating_rounds: 100,
        }
    }
}

/// pymoo's `Dominator.get_relation`: 1 if `a` dominates `b`, -1 if `b` dominates `a`, else 0.
pub fn relation(a: &[f64; 2], b: &[f64; 2]) -> i8 {
    let mut val = 0i8;
    for i in 0..2 {
        if a[i] < b[i] {
            if val == -1 {
                return 0;
            }
            val = 1;
        } else if b[i] < a[i] {
            if val == 1 {
                return 0;
            }
            val = -1;
        }
    }
    val
}

/// Deb's fast non-dominated sort (pymoo's Python version, same front order). Stops once at least
/// `n_stop_if_ranked` points are ranked.
pub fn fast_non_dominated_sort(f: &[[f64; 2]], n_stop_if_ranked: usize) -> Vec<Vec<usize>> {
    let n = f.len();
    let mut fronts = Vec::new();
    if n == 0 {
        return fronts;
    }
    let mut dominating: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut n_dominated = vec![0usize; n];
    let mut current = Vec::new();
    let mut n_ranked = 0;
    for i in 0..n {
        for j in i + 1..n {
            match relation(&f[i], &f[j]) {
                1 => {
                    dominating[i].push(j);
                    n_dominated[j] += 1;
                }
                -1 => {
                    dominating[j].push(i);
                    n_dominated[i] += 1;
                }
                _ => {}
            }
        }
        if n_dominated[i] == 0 {
            current.push(i);
            n_ranked += 1;
        }
    }
    fronts.push(current.clone());
    while n_ranked < n && n_ranked < n_stop_if_ranked {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominating[i] {
                n_dominated[j] -= 1;
                if n_dominated[j] == 0 {
                    next.push(j);
                    n_ranked += 1;
                }
            }
        }
        fronts.push(next.clone());
        current = next;
    }
    fronts
}

/// Indices of the non-dominated points (the first front), in index order.
pub fn non_dominated(f: &[[f64; 2]]) -> Vec<usize> {
    fast_non_dominated_sort(f, 1)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// pymoo's `calc_crowding_distance` behind `FunctionalDiversity(filter_out_duplicates=False)`.
pub fn crowding_distance(f: &[[f64; 2]]) -> Vec<f64> {
    let n = f.len();
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let m = 2;
    let mut cd = vec![0f64; n];
    for j in [0usize, 1] {
        // stable argsort (numpy mergesort)
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| f[a][j].total_cmp(&f[b][j]));
        let sorted: Vec<f64> = idx.iter().map(|&i| f[i][j]).collect();
        let norm = sorted[n - 1] - sorted[0];
        // gap[k] = sorted[k] - sorted[k-1], with ±∞ at the ends (n + 1 gaps)
        let gap = |k: usize| -> f64 {
            if k == 0 || k == n {
                f64::INFINITY
            } else {
                sorted[k] - sorted[k - 1]
            }
        };
        let scaled = |g: f64| -> f64 {
            if norm == 0.0 {
                0.0 // x / NaN = NaN → 0 in pymoo
            } else {
                let v = g / norm;
                if v.is_nan() {
                    0.0
                } else {
                    v
                }
            }
        };
        for (k, &i) in idx.iter().enumerate() {
            cd[i] += scaled(gap(k)) + scaled(gap(k + 1));
        }
    }
    cd.iter().map(|d| d / m as f64).collect()
}

/// RankAndCrowding survival with pymoo's feasibility split. Returns the survivors in pymoo's
/// order and records rank and crowding on every individual of every front looked at.
pub fn survive(mut pop: Vec<Individual>, n_survive: usize, rng: &mut SearchRng) -> Vec<Individual> {
    if pop.is_empty() {
        return pop;
    }
    let n_survive = n_survive.min(pop.len());
    let feas: Vec<usize> = (0..pop.len()).filter(|&i| pop[i].feasible()).collect();
    let mut infeas: Vec<usize> = (0..pop.len()).filter(|&i| !pop[i].feasible()).collect();
    infeas.sort_by(|&a, &b| pop[a].cv.total_cmp(&pop[b].cv));
    let mut survivors: Vec<usize> = Vec::new();
    if !feas.is_empty() {
        let n_feas_survive = feas.len().min(n_survive);
        let f: Vec<[f64; 2]> = feas.iter().map(|&i| pop[i].f).collect();
        let fronts = fast_non_dominated_sort(&f, n_feas_survive);
        for (k, front) in fronts.iter().enumerate() {
            let front_f: Vec<[f64; 2]> = front.iter().map(|&i| f[i]).collect();
            let crowd = crowding_distance(&front_f);
            let mut take: Vec<usize> = (0..front.len()).collect();
            if survivors.len() + front.len() > n_feas_survive {
                let n_remove = survivors.len() + front.len() - n_feas_survive;
                // randomized_argsort(crowd, descending): random permutation, ascending sort,
                // reversed; then drop the last n_remove.
                let perm = rng.permutation(front.len());
                let mut order = perm;
                order.sort_by(|&a, &b| crowd[a].total_cmp(&crowd[b]));
                order.reverse();
                order.truncate(front.len() - n_remove);
                take = order;
            }
            for (j, &i) in front.iter().enumerate() {
                let ind = &mut pop[feas[i]];
                ind.rank = Some(k);
                ind.crowding = crowd[j];
            }
            survivors.extend(take.iter().map(|&j| feas[front[j]]));
        }
    }
    let remaining = n_survive - survivors.len();
    survivors.extend(infeas.iter().take(remaining));
    let mut slots: Vec<Option<Individual>> = pop.into_iter().map(Some).collect();
    survivors
        .into_iter()
        .map(|i| slots[i].take().expect("each survivor once"))
        .collect()
}

/// pymoo's `binary_tournament` (`comp_by_dom_and_crowding`): the index of the winner.
pub fn binary_tournament(pop: &[Individual], a: usize, b: usize, rng: &mut SearchRng) -> usize {
    let (ia, ib) = (&pop[a], &pop[b]);
    let pick_random = |rng: &mut SearchRng| if rng.coin() { b } else { a };
    if ia.cv > 0.0 || ib.cv > 0.0 {
        return if ia.cv < ib.cv {
            a
        } else if ib.cv < ia.cv {
            b
        } else {
            pick_random(rng)
        };
    }
    match relation(&ia.f, &ib.f) {
        1 => a,
        -1 => b,
        _ => {
            if ia.crowding > ib.crowding {
                a
            } else if ia.crowding < ib.crowding {
                b
            } else {
                pick_random(rng)
            }
        }
    }
}

/// `TournamentSelection(pressure=2)`: `n_select` groups of `n_parents` parent indices.
pub fn tournament_selection(
    pop: &[Individual],
    n_select: usize,
    n_parents: usize,
    rng: &mut SearchRng,
) -> Vec<Vec<usize>> {
    let n_random = n_select * n_parents * 2;
    let n_perms = n_random.div_ceil(pop.len());
    let mut p = Vec::with_capacity(n_perms * pop.len());
    for _ in 0..n_perms {
        p.extend(rng.permutation(pop.len()));
    }
    p.truncate(n_random);
    let winners: Vec<usize> = p
        .chunks(2)
        .map(|c| binary_tournament(pop, c[0], c[1], rng))
        .collect();
    winners.chunks(n_parents).map(|c| c.to_vec()).collect()
}

/// The cut points of `PointCrossover(n_points)` for `n_var` bits: distinct, in `1..n_var`,
/// sorted, with `n_var` appended.
pub fn crossover_points(n_var: usize, n_points: usize, rng: &mut SearchRng) -> Vec<usize> {
    assert!(
        n_var > n_points,
        "{n_points}-point crossover needs more than {n_points} bits"
    );
    let mut r: Vec<usize> = rng.permutation(n_var - 1)[..n_points]
        .iter()
        .map(|x| x + 1)
        .collect();
    r.sort_unstable();
    r.push(n_var);
    r
}

/// Crosses two parents at the given cut points (see [`crossover_points`]).
pub fn cross_at(p0: &[bool], p1: &[bool], cuts: &[usize]) -> (Genome, Genome) {
    let (mut c0, mut c1) = (p0.to_vec(), p1.to_vec());
    let mut j = 0;
    while j + 1 < cuts.len() {
        let (a, b) = (cuts[j], cuts[j + 1]);
        c0[a..b].copy_from_slice(&p1[a..b]);
        c1[a..b].copy_from_slice(&p0[a..b]);
        j += 2;
    }
    (c0, c1)
}

/// Crossover of every mating (pairs of population indices), pymoo's offspring order.
pub fn crossover(
    pop: &[Individual],
    parents: &[Vec<usize>],
    prob: f64,
    n_points: usize,
    rng: &mut SearchRng,
) -> Vec<Genome> {
    let m = parents.len();
    let mut first = Vec::with_capacity(m);
    let mut second = Vec::with_capacity(m);
    for pair in parents {
        let (p0, p1) = (&pop[pair[0]].genome, &pop[pair[1]].genome);
        if rng.uniform() < prob {
            let cuts = crossover_points(p0.len(), n_points, rng);
            let (c0, c1) = cross_at(p0, p1, &cuts);
            first.push(c0);
            second.push(c1);
        } else {
            first.push(p0.clone());
            second.push(p1.clone());
        }
    }
    first.extend(second);
    first
}

/// `BitflipMutation(prob, prob_var)` on each genome.
pub fn bitflip_mutation(off: &mut [Genome], prob: f64, prob_var: Option<f64>, rng: &mut SearchRng) {
    for g in off.iter_mut() {
        if rng.uniform() <= prob {
            let pv = prob_var.unwrap_or_else(|| (1.0 / g.len() as f64).min(0.5));
            for b in g.iter_mut() {
                if rng.uniform() < pv {
                    *b = !*b;
                }
            }
        }
    }
}

/// The repair: the first `forced_prefix` bits (step 0) set to recompute.
pub fn repair(g: &mut Genome, forced_prefix: usize) {
    let n = forced_prefix.min(g.len());
    g[..n].iter_mut().for_each(|b| *b = true);
}

/// ECAD's constraint: `max(0, min_diff − Hamming(g, all-true))`.
pub fn constraint_violation(g: &[bool], min_diff: usize) -> f64 {
    let diff = g.iter().filter(|&&b| !b).count();
    min_diff.saturating_sub(diff) as f64
}

/// `DefaultDuplicateElimination.do(new, *others)`: drops genomes equal to an earlier one in
/// `new`, then those equal to a genome of any of `others`.
pub fn eliminate_duplicates(new: Vec<Genome>, others: &[&[Genome]]) -> Vec<Genome> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(new.len());
    for g in new {
        if seen.insert(g.clone()) {
            out.push(g);
        }
    }
    for other in others {
        if other.is_empty() {
            continue;
        }
        let set: std::collections::HashSet<&Genome> = other.iter().collect();
        out.retain(|g| !set.contains(g));
    }
    out
}

/// What a mating call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatingReport {
    /// Mating rounds run.
    pub rounds: usize,
    /// Offspring dropped as duplicates.
    pub duplicates: usize,
}

/// pymoo's mating loop: up to `n_offsprings` new, distinct, repaired offspring.
pub fn mating(
    pop: &[Individual],
    n_offsprings: usize,
    params: &GaParams,
    rng: &mut SearchRng,
) -> (Vec<Genome>, MatingReport) {
    let pop_genomes: Vec<Genome> = pop.iter().map(|i| i.genome.clone()).collect();
    let mut off: Vec<Genome> = Vec::new();
    let mut report = MatingReport::default();
    while off.len() < n_offsprings && !pop.is_empty() {
        let remaining = n_offsprings - off.len();
        let n_matings = remaining.div_ceil(2);
        let parents = tournament_selection(pop, n_matings, 2, rng);
        let mut children = crossover(pop, &parents, params.crossover_prob, params.n_points, rng);
        bitflip_mutation(
            &mut children,
            params.mutation_prob,
            params.mutation_prob_var,
            rng,
        );
        for c in children.iter_mut() {
            repair(c, params.forced_prefix);
        }
        let made = children.len();
        let mut children = eliminate_duplicates(children, &[&pop_genomes, &off]);
        report.duplicates += made - children.len();
        children.truncate(remaining);
        off.extend(children);
        report.rounds += 1;
        if report.rounds >= params.max_mating_rounds {
            break;
        }
    }
    (off, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ind(id: u64, f: [f64; 2]) -> Individual {
        Individual {
            id,
            genome: vec![false; 8],
            f,
            cv: 0.0,
            rank: None,
            crowding: 0.0,
        }
    }

    #[test]
    fn relation_cases() {
        assert_eq!(relation(&[1.0, 1.0], &[2.0, 2.0]), 1);
        assert_eq!(relation(&[1.0, 2.0], &[1.0, 3.0]), 1);
        assert_eq!(relation(&[2.0, 2.0], &[1.0, 2.0]), -1);
        assert_eq!(relation(&[1.0, 3.0], &[2.0, 2.0]), 0);
        assert_eq!(relation(&[1.0, 1.0], &[1.0, 1.0]), 0);
    }

    #[test]
    fn non_dominated_sort_hand_worked() {
        // 0:(1,5) 1:(2,3) 2:(4,1) first front; 3:(3,4) dominated by 1; 4:(5,5) dominated by
        // everything in front 2 except... (3,4) dominates it; 5:(2,3) duplicate of 1.
        let f = [
            [1.0, 5.0],
            [2.0, 3.0],
            [4.0, 1.0],
            [3.0, 4.0],
            [5.0, 5.0],
            [2.0, 3.0],
        ];
        let fronts = fast_non_dominated_sort(&f, usize::MAX);
        assert_eq!(fronts, vec![vec![0, 1, 2, 5], vec![3], vec![4]]);
        // stops once enough are ranked
        let fronts = fast_non_dominated_sort(&f, 4);
        assert_eq!(fronts, vec![vec![0, 1, 2, 5]]);
        let fronts = fast_non_dominated_sort(&f, 5);
        assert_eq!(fronts.len(), 2);
        assert_eq!(non_dominated(&f), vec![0, 1, 2, 5]);
    }

    #[test]
    fn crowding_distance_hand_worked() {
        // Points on a line x + y = 4 at x = 0, 1, 3, 4 (given out of order).
        let f = [[3.0, 1.0], [0.0, 4.0], [4.0, 0.0], [1.0, 3.0]];
        let cd = crowding_distance(&f);
        // x range 4, y range 4. Point (1,3): x gaps 1 and 2 → 3/4; y gaps 1 and 2 → 3/4; sum 1.5,
        // / 2 objectives = 0.75. Point (3,1) the same. Extremes ∞.
        assert_eq!(cd[0], 0.75);
        assert_eq!(cd[3], 0.75);
        assert!(cd[1].is_infinite() && cd[2].is_infinite());
        // ≤ 2 points: ∞
        assert!(crowding_distance(&[[1.0, 2.0], [2.0, 1.0]])
            .iter()
            .all(|d| d.is_infinite()));
        // an objective with all-equal values contributes 0, even to the extremes
        let f = [[0.0, 1.0], [1.0, 1.0], [3.0, 1.0]];
        let cd = crowding_distance(&f);
        assert!(cd[0].is_infinite() && cd[2].is_infinite());
        assert_eq!(cd[1], (1.0 / 3.0 + 2.0 / 3.0) / 2.0);
        // duplicates: the first of two equal extremes is ∞ on that side, the second gets 0 gap
        let f = [[0.0, 2.0], [0.0, 2.0], [2.0, 0.0]];
        let cd = crowding_distance(&f);
        // obj0 sorted: 0(i0),0(i1),2(i2); i0: ∞ + 0; i1: 0 + 1; obj1 sorted: 0(i2),2(i0),2(i1):
        // i0: 1 + 0, i1: 0 + ∞.
        assert!(cd[0].is_infinite() && cd[1].is_infinite() && cd[2].is_infinite());
    }

    #[test]
    fn survival_splits_the_last_front_by_crowding() {
        let mut rng = SearchRng::new(0);
        // front 0: (0,4) (1,3) (3,1) (4,0) ; front 1: (2,4) (4,2)
        let pop = vec![
            ind(0, [0.0, 4.0]),
            ind(1, [1.0, 3.0]),
            ind(2, [3.0, 1.0]),
            ind(3, [4.0, 0.0]),
            ind(4, [2.0, 4.0]),
            ind(5, [4.0, 2.0]),
        ];
        let s = survive(pop.clone(), 3, &mut rng);
        let ids: Vec<u64> = s.iter().map(|i| i.id).collect();
        // the two extremes (∞) then one of the two 0.75-crowded middles
        assert_eq!(ids.len(), 3);
        assert!(ids[..2].contains(&0) && ids[..2].contains(&3));
        assert!(ids[2] == 1 || ids[2] == 2);
        assert!(s.iter().all(|i| i.rank == Some(0)));
        // whole first front fits, second front split: both of front 1 have ∞ (2 points)
        let s = survive(pop.clone(), 5, &mut rng);
        let ids: Vec<u64> = s.iter().map(|i| i.id).collect();
        assert_eq!(&ids[..4], &[0, 1, 2, 3]);
        assert!(ids[4] == 4 || ids[4] == 5);
        assert_eq!(s[4].rank, Some(1));
    }

    #[test]
    fn survival_puts_infeasible_last_by_cv() {
        let mut rng = SearchRng::new(0);
        let mut pop = vec![ind(0, [0.0, 0.0]), ind(1, [5.0, 5.0]), ind(2, [0.0, 0.0])];
        pop[0].cv = 2.0;
        pop[2].cv = 1.0;
        let s = survive(pop.clone(), 3, &mut rng);
        let ids: Vec<u64> = s.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        let s = survive(pop, 1, &mut rng);
        assert_eq!(s[0].id, 1);
    }

    #[test]
    fn tournament_rules() {
        let mut rng = SearchRng::new(3);
        let mut pop = vec![ind(0, [1.0, 1.0]), ind(1, [2.0, 2.0]), ind(2, [0.5, 3.0])];
        // dominance
        assert_eq!(binary_tournament(&pop, 0, 1, &mut rng), 0);
        assert_eq!(binary_tournament(&pop, 1, 0, &mut rng), 0);
        // non-dominated: crowding decides
        pop[0].crowding = 1.0;
        pop[2].crowding = 2.0;
        assert_eq!(binary_tournament(&pop, 0, 2, &mut rng), 2);
        // equal crowding: random, both outcomes happen
        pop[2].crowding = 1.0;
        let mut seen = [false; 3];
        for _ in 0..64 {
            seen[binary_tournament(&pop, 0, 2, &mut rng)] = true;
        }
        assert!(seen[0] && seen[2]);
        // infeasible: smaller CV wins whatever the objectives
        pop[0].cv = 1.0;
        assert_eq!(binary_tournament(&pop, 0, 1, &mut rng), 1);
        pop[1].cv = 3.0;
        assert_eq!(binary_tournament(&pop, 0, 1, &mut rng), 0);
    }

    #[test]
    fn selection_shape_and_coverage() {
        let mut rng = SearchRng::new(5);
        let pop: Vec<Individual> = (0..5).map(|i| ind(i, [i as f64, -(i as f64)])).collect();
        let sel = tournament_selection(&pop, 7, 2, &mut rng);
        assert_eq!(sel.len(), 7);
        assert!(sel.iter().all(|p| p.len() == 2 && p.iter().all(|&i| i < 5)));
    }

    #[test]
    fn four_point_crossover_hand_worked() {
        let p0 = vec![false; 10];
        let p1 = vec![true; 10];
        let (c0, c1) = cross_at(&p0, &p1, &[2, 4, 5, 8, 10]);
        let s = |g: &[bool]| {
            g.iter()
                .map(|&b| if b { '1' } else { '0' })
                .collect::<String>()
        };
        assert_eq!(s(&c0), "0011011100");
        assert_eq!(s(&c1), "1100100011");
        // one point: the tail from the cut
        let (c0, _) = cross_at(&p0, &p1, &[7, 10]);
        assert_eq!(s(&c0), "0000000111");
    }

    #[test]
    fn crossover_points_are_distinct_sorted_in_range() {
        let mut rng = SearchRng::new(9);
        for _ in 0..200 {
            let r = crossover_points(12, 4, &mut rng);
            assert_eq!(r.len(), 5);
            assert_eq!(r[4], 12);
            assert!(r.windows(2).all(|w| w[0] < w[1]));
            assert!(r[0] >= 1);
        }
        // every cut position in 1..n_var is reachable
        let mut hit = [false; 6];
        for _ in 0..500 {
            for &c in &crossover_points(6, 4, &mut rng)[..4] {
                hit[c] = true;
            }
        }
        assert_eq!(hit, [false, true, true, true, true, true]);
    }

    #[test]
    fn crossover_preserves_the_bit_multiset_per_position() {
        let mut rng = SearchRng::new(11);
        for _ in 0..100 {
            let n = 40;
            let a: Vec<bool> = (0..n).map(|_| rng.coin()).collect();
            let b: Vec<bool> = (0..n).map(|_| rng.coin()).collect();
            let pop = vec![
                Individual {
                    genome: a.clone(),
                    ..ind(0, [0.0, 0.0])
                },
                Individual {
                    genome: b.clone(),
                    ..ind(1, [0.0, 0.0])
                },
            ];
            let kids = crossover(&pop, &[vec![0, 1]], 0.9, 4, &mut rng);
            assert_eq!(kids.len(), 2);
            for k in 0..n {
                let mut x = [a[k], b[k]];
                let mut y = [kids[0][k], kids[1][k]];
                x.sort();
                y.sort();
                assert_eq!(x, y);
            }
            // at most 4 switches between "from parent 0" and "from parent 1" along child 0
            let src: Vec<bool> = (0..n).map(|k| kids[0][k] == a[k]).collect();
            let informative: Vec<bool> = (0..n).filter(|&k| a[k] != b[k]).map(|k| src[k]).collect();
            let switches = informative.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(switches <= 4);
        }
    }

    #[test]
    fn crossover_orders_first_children_then_second() {
        let mut rng = SearchRng::new(1);
        let mk = |id: u64, v: bool| Individual {
            genome: vec![v; 6],
            ..ind(id, [0.0, 0.0])
        };
        let pop = vec![mk(0, false), mk(1, true)];
        // prob 0: parents copied: [p0 of m0, p0 of m1, p1 of m0, p1 of m1]
        let kids = crossover(&pop, &[vec![0, 1], vec![1, 0]], 0.0, 4, &mut rng);
        assert_eq!(kids[0], vec![false; 6]);
        assert_eq!(kids[1], vec![true; 6]);
        assert_eq!(kids[2], vec![true; 6]);
        assert_eq!(kids[3], vec![false; 6]);
    }

    #[test]
    fn bitflip_prob_is_per_individual() {
        let mut rng = SearchRng::new(2);
        let n_var = 100;
        let mut off: Vec<Genome> = vec![vec![true; n_var]; 4000];
        bitflip_mutation(&mut off, 0.05, None, &mut rng);
        let changed = off.iter().filter(|g| g.iter().any(|&b| !b)).count();
        let flips: usize = off.iter().map(|g| g.iter().filter(|&&b| !b).count()).sum();
        // P(changed) = 0.05 · (1 − (1 − 1/100)^100) ≈ 0.0317 → ~127 of 4000
        assert!((80..180).contains(&changed), "{changed}");
        // expected flips = 4000 · 0.05 · 1 = 200
        assert!((140..270).contains(&flips), "{flips}");
        // prob 1, prob_var 1: everything flips
        let mut off = vec![vec![true, false, true]];
        bitflip_mutation(&mut off, 1.0, Some(1.0), &mut rng);
        assert_eq!(off[0], vec![false, true, false]);
        // prob 0: nothing
        let mut off = vec![vec![true; 5]; 10];
        bitflip_mutation(&mut off, 0.0, Some(1.0), &mut rng);
        assert!(off.iter().all(|g| g.iter().all(|&b| b)));
    }

    #[test]
    fn duplicates_are_dropped_against_batch_population_and_accepted() {
        let g = |s: &str| s.chars().map(|c| c == '1').collect::<Genome>();
        let new = vec![g("001"), g("010"), g("001"), g("111"), g("100")];
        let pop = vec![g("111")];
        let acc = vec![g("100")];
        let out = eliminate_duplicates(new, &[&pop, &acc]);
        assert_eq!(out, vec![g("001"), g("010")]);
    }

    #[test]
    fn repair_and_constraint() {
        let mut g = vec![false; 6];
        repair(&mut g, 3);
        assert_eq!(g, vec![true, true, true, false, false, false]);
        assert_eq!(constraint_violation(&g, 1), 0.0);
        assert_eq!(constraint_violation(&[true; 6], 1), 1.0);
        assert_eq!(constraint_violation(&[true, false], 3), 2.0);
    }

    #[test]
    fn mating_produces_distinct_repaired_new_offspring() {
        let mut rng = SearchRng::new(4);
        let n = 30;
        let pop: Vec<Individual> = (0..8)
            .map(|i| {
                let mut genome: Genome = (0..n).map(|_| rng.coin()).collect();
                repair(&mut genome, 3);
                Individual {
                    genome,
                    ..ind(i, [i as f64, 8.0 - i as f64])
                }
            })
            .collect();
        let params = GaParams::ecad(8, 3);
        let (off, rep) = mating(&pop, 8, &params, &mut rng);
        assert_eq!(off.len(), 8);
        assert!(rep.rounds >= 1);
        let set: std::collections::HashSet<&Genome> = off.iter().collect();
        assert_eq!(set.len(), 8);
        for o in &off {
            assert!(o[..3].iter().all(|&b| b));
            assert!(!pop.iter().any(|p| &p.genome == o));
        }
    }

    #[test]
    fn mating_gives_up_after_the_round_limit() {
        // a one-genome population with no crossover partner and no mutation can only copy
        // itself: every offspring is a duplicate.
        let mut rng = SearchRng::new(4);
        let pop = vec![Individual {
            genome: vec![true, false, true, false, true, false],
            ..ind(0, [0.0, 0.0])
        }];
        let mut params = GaParams::ecad(4, 1);
        params.mutation_prob = 0.0;
        let (off, rep) = mating(&pop, 4, &params, &mut rng);
        assert!(off.is_empty());
        assert_eq!(rep.rounds, 100);
    }

    /// Property: when the whole first front fits, survival keeps all of it.
    #[test]
    fn survival_never_drops_a_fitting_first_front() {
        let mut rng = SearchRng::new(21);
        for trial in 0..300 {
            let n = 2 + rng.below(30);
            let pop: Vec<Individual> = (0..n)
                .map(|i| {
                    let mut x = ind(i as u64, [rng.below(10) as f64, rng.below(10) as f64]);
                    if rng.below(6) == 0 {
                        x.cv = 1.0 + rng.below(3) as f64;
                    }
                    x
                })
                .collect();
            let feas_f: Vec<[f64; 2]> = pop.iter().filter(|i| i.feasible()).map(|i| i.f).collect();
            let feas_ids: Vec<u64> = pop.iter().filter(|i| i.feasible()).map(|i| i.id).collect();
            let first: Vec<u64> = non_dominated(&feas_f)
                .iter()
                .map(|&i| feas_ids[i])
                .collect();
            let n_survive = first.len() + rng.below(n - first.len() + 1);
            let s = survive(pop.clone(), n_survive, &mut rng);
            assert_eq!(s.len(), n_survive.min(n), "trial {trial}");
            let ids: std::collections::HashSet<u64> = s.iter().map(|i| i.id).collect();
            assert_eq!(ids.len(), s.len());
            for id in &first {
                assert!(
                    ids.contains(id),
                    "trial {trial}: dropped non-dominated {id}"
                );
            }
            // feasible survivors come before infeasible ones
            let first_infeasible = s.iter().position(|i| !i.feasible()).unwrap_or(s.len());
            assert!(s[first_infeasible..].iter().all(|i| !i.feasible()));
        }
    }

    /// Property: survival keeps whole fronts in rank order (a survivor of rank k implies every
    /// feasible individual of rank < k survived).
    #[test]
    fn survival_is_elitist_by_rank() {
        let mut rng = SearchRng::new(8);
        for _ in 0..200 {
            let n = 3 + rng.below(25);
            let pop: Vec<Individual> = (0..n)
                .map(|i| ind(i as u64, [rng.below(8) as f64, rng.below(8) as f64]))
                .collect();
            let n_survive = 1 + rng.below(n);
            let f: Vec<[f64; 2]> = pop.iter().map(|i| i.f).collect();
            let fronts = fast_non_dominated_sort(&f, usize::MAX);
            let mut rank = vec![0; n];
            for (k, fr) in fronts.iter().enumerate() {
                for &i in fr {
                    rank[i] = k;
                }
            }
            let s = survive(pop, n_survive, &mut rng);
            let worst = s.iter().map(|i| rank[i.id as usize]).max().unwrap();
            let kept: std::collections::HashSet<u64> = s.iter().map(|i| i.id).collect();
            for (i, &r) in rank.iter().enumerate() {
                if r < worst {
                    assert!(kept.contains(&(i as u64)));
                }
            }
            for x in &s {
                assert_eq!(x.rank, Some(rank[x.id as usize]));
            }
        }
    }
}
