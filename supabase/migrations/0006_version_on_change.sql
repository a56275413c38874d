-- The user's version moves only when a row really changes.
--
-- 0005 stamped each row in a BEFORE trigger that took the user's next version. PostgreSQL runs BEFORE INSERT
-- triggers for the proposed row even when ON CONFLICT then does nothing or updates instead, so every session start
-- (ensure_profile), every lost "only if absent" save and every upsert of an unchanged value moved the version, and
-- every session of the user read the change feed for nothing.
--
-- Now the BEFORE trigger only reads the number a change will take (the user's version + 1, under the lock of the
-- user's row, held to the end of the transaction, so one user's changes still commit in version order), and an
-- AFTER trigger, which PostgreSQL runs only for a row inserted or updated, moves the user's version to it. Rows
-- changed by one statement may share a version: they commit together. Re-applying this file is harmless; it also
-- upgrades a database that ran 0005 as it was first written.

-- The version a change of the user would take, without taking it; locks the user's row (created at 0 if missing:
-- a version of 0 is no version, as an absent row).
create or replace function public.companion_peek_user_version(p_user_id uuid) returns bigint
language plpgsql security definer set search_path = public as $$
declare
    current bigint;
begin
    insert into public.user_versions (user_id, version) values (p_user_id, 0) on conflict (user_id) do nothing;
    select v.version into current from public.user_versions v where v.user_id = p_user_id for update;
    return current + 1;
end
$$;
revoke all on function public.companion_peek_user_version(uuid) from public, anon, authenticated;

-- Replaces 0005's: reads the next version instead of taking it.
create or replace function public.companion_stamp_user_version() returns trigger
language plpgsql security definer set search_path = public as $$
begin
    if tg_op = 'UPDATE' and tg_table_name = 'memories' then  -- nested: plpgsql does not short-circuit
        if new.value is not distinct from old.value and new.importance is not distinct from old.importance then
            new.version := old.version;  -- an access count: nothing a session holds
            return new;
        end if;
    end if;
    new.version := public.companion_peek_user_version(new.user_id);
    return new;
end
$$;

-- After a row was really inserted or changed: the user's version becomes the one stamped on it.
create or replace function public.companion_take_user_version() returns trigger
language plpgsql security definer set search_path = public as $$
begin
    if tg_op = 'UPDATE' and new.version is not distinct from old.version then
        return null;  -- stamped with its old version: nothing a session holds changed
    end if;
    update public.user_versions set version = greatest(version, new.version) where user_id = new.user_id;
    return null;
end
$$;

drop trigger if exists memories_take_user_version on public.memories;
create trigger memories_take_user_version
    after insert or update on public.memories
    for each row execute function public.companion_take_user_version();

drop trigger if exists profiles_take_user_version on public.profiles;
create trigger profiles_take_user_version
    after insert or update on public.profiles
    for each row execute function public.companion_take_user_version();

-- Erasure, as in 0005, and it also returns the version it took ("version"): the erasing session moves to it, and
-- does not take its own erasure for one made elsewhere.
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
        'memories', n_memories, 'onboarding', n_onboarding, 'profiles', n_profiles, 'version', erased);
end
$$;
