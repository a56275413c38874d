-- A change feed per user, so that every live session of a user (on any worker) applies what changed since it last
-- looked, and a compare-and-set per memory key (services/user_memory.py).
--
-- Every memory and profile row carries the user version at which it last changed (`version`), stamped by the
-- database in the same transaction as the change. A deleted memory leaves a tombstone: a hash of its user, category
-- and key (never the key itself: what was forgotten must not stay readable) and the version of its deletion.
-- Erasing a user (companion_delete_user_data) drops their tombstones and notes the version of the erasure instead.
-- Versions may skip numbers (an upsert that turns into an update, or loses its compare-and-set, still takes one);
-- they never go back. Re-applying this file is harmless.

alter table public.memories add column if not exists version bigint not null default 0;
alter table public.profiles add column if not exists version bigint not null default 0;
alter table public.user_versions add column if not exists erased_version bigint not null default 0;
create index if not exists memories_user_version on public.memories (user_id, version);

create table if not exists public.memory_tombstones (
    user_id  uuid not null,
    key_hash text not null,  -- sha256 of "<user_id>/<category>/<key>", hex
    version  bigint not null,
    primary key (user_id, key_hash)
);
create index if not exists memory_tombstones_user_version on public.memory_tombstones (user_id, version);
alter table public.memory_tombstones enable row level security;
drop policy if exists memory_tombstones_owner_read on public.memory_tombstones;
create policy memory_tombstones_owner_read on public.memory_tombstones
    for select to authenticated using (user_id = auth.uid());
grant select on public.memory_tombstones to authenticated;
grant all on public.memory_tombstones to service_role;

-- The user's next version. The row lock it takes is held to the end of the transaction, so the changes of one user
-- commit in the order of their versions: a reader that sees version v sees every change up to v.
create or replace function public.companion_next_user_version(p_user_id uuid) returns bigint
language sql security definer set search_path = public as $$
    insert into public.user_versions as v (user_id, version) values (p_user_id, 1)
        on conflict (user_id) do update set version = v.version + 1
    returning version
$$;
revoke all on function public.companion_next_user_version(uuid) from public, anon, authenticated;

create or replace function public.companion_memory_key_hash(p_user_id uuid, p_category text, p_key text)
returns text language sql immutable as $$
    select encode(sha256(convert_to(p_user_id::text || '/' || p_category || '/' || p_key, 'UTF8')), 'hex')
$$;

-- security definer: an end user's own write (row-level security) still stamps its version.
create or replace function public.companion_stamp_user_version() returns trigger
language plpgsql security definer set search_path = public as $$
begin
    if tg_op = 'UPDATE' and tg_table_name = 'memories' then  -- nested: plpgsql does not short-circuit
        if new.value is not distinct from old.value and new.importance is not distinct from old.importance then
            new.version := old.version;  -- an access count: nothing a session holds
            return new;
        end if;
    end if;
    new.version := public.companion_next_user_version(new.user_id);
    return new;
end
$$;

create or replace function public.companion_memory_deleted() returns trigger
language plpgsql security definer set search_path = public as $$
begin
    insert into public.memory_tombstones as t (user_id, key_hash, version)
        values (old.user_id, public.companion_memory_key_hash(old.user_id, old.category, old.key),
                public.companion_next_user_version(old.user_id))
        on conflict (user_id, key_hash) do update set version = excluded.version;
    return null;
end
$$;

-- 0003's triggers bumped the version after the change; these stamp it on the row as well.
drop trigger if exists memories_bump_user_version on public.memories;
drop trigger if exists memories_stamp_user_version on public.memories;
create trigger memories_stamp_user_version
    before insert or update on public.memories
    for each row execute function public.companion_stamp_user_version();
drop trigger if exists memories_leave_tombstone on public.memories;
create trigger memories_leave_tombstone
    after delete on public.memories
    for each row execute function public.companion_memory_deleted();

drop trigger if exists profiles_bump_user_version on public.profiles;
drop trigger if exists profiles_stamp_user_version on public.profiles;
create trigger profiles_stamp_user_version
    before insert or update on public.profiles
    for each row execute function public.companion_stamp_user_version();
drop trigger if exists profiles_deleted_bump_user_version on public.profiles;
create trigger profiles_deleted_bump_user_version
    after delete on public.profiles
    for each row execute function public.companion_bump_user_version();

-- Erasure: every row of the user goes, their tombstones too (nothing of what they said stays, not even a hash);
-- sessions behind the erasure's version clear what they hold instead.
create or replace function public.companion_delete_user_data(p_user_id uuid)
returns jsonb
language plpgsql as $$
declare
    n_messages integer; n_conversations integer; n_history integer;
    n_memories integer; n_onboarding integer; n_profiles integer; erased bigint;
begin
    delete from public.messages where user_id = p_user_id;
    get diagnostics n_messages = row_count;
    delete from public.conversations where user_id = p_user_id;
    get diagnostics n_conversations = row_count;
    delete from public.memory_history where user_id = p_user_id;
    get diagnostics n_history = row_count;
    delete from public.memories where user_id = p_user_id;
    get diagnostics n_memories = row_count;
    delete from public.onboarding_answers where user_id = p_user_id;
    get diagnostics n_onboarding = row_count;
    delete from public.profiles where user_id = p_user_id;
    get diagnostics n_profiles = row_count;
    delete from public.memory_tombstones where user_id = p_user_id;
    erased := public.companion_next_user_version(p_user_id);
    update public.user_versions set erased_version = erased where user_id = p_user_id;
    return jsonb_build_object(
        'messages', n_messages, 'conversations', n_conversations, 'memory_history', n_history,
        'memories', n_memories, 'onboarding', n_onboarding, 'profiles', n_profiles);
end
$$;
