//! The planner's last line of defence: replay a plan on a model of the voters and refuse it if
//! any membership change in it would leave fewer healthy voters than the quorum, or add a
//! learner while another is pending. The planner's rules should make this unreachable; if a rule
//! is ever wrong, this turns the bug into a refusal instead of a lost quorum.

use super::{quorum, MemberAction, Observation, Refusal};

#[derive(Debug)]
struct Model {
    /// (member id, is learner, healthy)
    members: Vec<(u64, bool, bool)>,
}

impl Model {
    fn counts(&self) -> (usize, usize) {
        let voters = self.members.iter().filter(|m| !m.1).count();
        let healthy = self.members.iter().filter(|m| !m.1 && m.2).count();
        (voters, healthy)
    }
}

pub(super) fn check_plan(obs: &Observation, actions: &[MemberAction]) -> Result<(), Refusal> {
    let mut model = Model {
        members: obs
            .members
            .iter()
            .map(|m| (m.id, m.is_learner, m.is_healthy()))
            .collect(),
    };
    for action in actions {
        let (voters, healthy) = model.counts();
        let change = match action {
            MemberAction::Remove { name, member_id } => {
                model.members.retain(|m| m.0 != *member_id);
                format!("removing {name}")
            }
            MemberAction::Promote { name, member_id } => {
                for m in model.members.iter_mut().filter(|m| m.0 == *member_id) {
                    m.1 = false;
                }
                format!("promoting {name}")
            }
            MemberAction::AddLearner { name, .. } => {
                if model.members.iter().any(|m| m.1) {
                    return Err(Refusal::LearnerPending { name: name.clone() });
                }
                // An added learner is not started yet: not healthy, and not a voter.
                model.members.push((u64::MAX, true, false));
                continue;
            }
            _ => continue,
        };
        let (voters_after, healthy_after) = model.counts();
        let needed = quorum(voters_after);
        if healthy_after < needed {
            return Err(Refusal::WouldLoseQuorum {
                change,
                healthy,
                voters,
                healthy_after,
                voters_after,
                needed,
            });
        }
    }
    Ok(())
}
