-- The topic member counts of the memberships that exist (issue 31), online: a file of
-- its own, so it runs after sql/162 committed its triggers. It holds no table lock:
-- sign-ups, confirmations, joins and erasures go on meanwhile and their deltas add up
-- with the counts taken here (see topic_member_counts_rebuild in sql/162). It reads
-- every membership once (1 M memberships: see docs/deploying/capacity.md).
SELECT topic_member_counts_rebuild();
