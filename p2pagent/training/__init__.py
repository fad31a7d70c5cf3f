"""Leaderless data-parallel training: members of a run average their parameters in groups
derived from the membership view (pure core: groups, deadlines, reduce, round, averager), an
asyncio driver over the Peer service, and the API a user's training loop calls."""
