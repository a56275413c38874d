-- Tombstones do not stay forever.
--
-- A tombstone (0005) holds a hash of the user, category and key of a memory that was forgotten. Keys are short
-- words ("sister", "diagnosis"), so whoever reads the table can test guesses against the hash: kept forever, it
-- would say what a person once asked to forget. A tombstone is needed only until every live session of the user
-- has caught up past it; after that it is pruned (companion_prune_tombstones, called by every job process at
-- start with TOMBSTONE_RETENTION_HOURS).
--
-- user_versions.pruned_version is the highest version of a tombstone pruned for the user: a session at an older
-- version may have missed a deletion the feed no longer shows, so it reads every memory of the user instead and
-- drops what it holds that is not among them (Storage.changes_since, "everything"). No personal data; re-applying
-- this file is harmless.

alter table public.memory_tombstones add column if not exists created_at timestamptz not null default now();
create index if not exists memory_tombstones_created_at on public.memory_tombstones (created_at);
alter table public.user_versions add column if not exists pruned_version bigint not null default 0;

-- Replaces 0005's: a tombstone written again (the key saved and forgotten once more) is as new as its deletion.
create or replace function public.companion_memory_deleted() returns trigger
language plpgsql security definer set search_path = public as $$
begin
    insert into public.memory_tombstones as t (user_id, key_hash, version)
        values (old.user_id, public.companion_memory_key_hash(old.user_id, old.category, old.key),
                public.companion_next_user_version(old.user_id))
        on conflict (user_id, key_hash) do update set version = excluded.version, created_at = now();
    return null;
end
$$;

-- Prunes every user's tombstones written before p_before, and moves each such user's pruned_version to the
-- newest of theirs it pruned, in one transaction (a reader's snapshot sees both or neither). Returns how many.
create or replace function public.companion_prune_tombstones(p_before timestamptz) returns integer
language sql security definer set search_path = public as $$
    with pruned as (
        delete from public.memory_tombstones where created_at < p_before returning user_id, version
    ), horizons as (
        select user_id, max(version) as version from pruned group by user_id
    ), moved as (
        update public.user_versions v set pruned_version = greatest(v.pruned_version, h.version)
        from horizons h where v.user_id = h.user_id
        returning 1
    )
    select count(*)::integer from pruned  -- "moved" runs all the same: PostgreSQL runs every writing CTE once
$$;
revoke all on function public.companion_prune_tombstones(timestamptz) from public, anon, authenticated;
grant execute on function public.companion_prune_tombstones(timestamptz) to service_role;

-- The change feed in one request (infrastructure/storage/supabase.py), as PostgresStorage reads it in one
-- transaction: STABLE, so every statement sees the snapshot of the call, and the version, the rows and the pruning
-- horizon agree. Rows as to_jsonb writes them (PostgREST's shapes: bytea as \x-hex, times in ISO 8601). Only the
-- worker's service role may call it: security definer reads every user's rows.
create or replace function public.companion_changes_since(p_user_id uuid, p_version bigint) returns jsonb
language plpgsql stable security definer set search_path = public as $$
declare
    v public.user_versions;
    everything boolean;
begin
    select * into v from public.user_versions where user_id = p_user_id;
    everything := coalesce(p_version < v.pruned_version, false);
    return jsonb_build_object(
        'version', coalesce(v.version, 0),
        'erased_version', coalesce(v.erased_version, 0),
        'everything', everything,
        'memories', coalesce((
            select jsonb_agg(to_jsonb(m) order by m.version) from public.memories m
            where m.user_id = p_user_id and m.version > (case when everything then -1 else p_version end)
        ), '[]'::jsonb),
        'deleted', case when everything then '[]'::jsonb else coalesce((
            select jsonb_agg(jsonb_build_object('key_hash', t.key_hash, 'version', t.version))
            from public.memory_tombstones t where t.user_id = p_user_id and t.version > p_version
        ), '[]'::jsonb) end,
        'profile', (select to_jsonb(p) from public.profiles p where p.user_id = p_user_id)
    );
end
$$;
revoke all on function public.companion_changes_since(uuid, bigint) from public, anon, authenticated;
grant execute on function public.companion_changes_since(uuid, bigint) to service_role;
