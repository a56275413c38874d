-- Companion schema for PostgreSQL and Supabase. Re-applying this file is harmless.
-- Embeddings are bytea holding float32 little-endian values, 4 bytes a dimension (no extension: ranking happens in
-- the worker with numpy, and bytes travel both ways without turning every float into text).

create table if not exists public.profiles (
    user_id        uuid primary key,
    name           text,
    preferred_name text,
    timezone       text,
    language       text,
    summary        text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

-- Written by the app (as the user) after its onboarding screens; claimed once by the worker.
create table if not exists public.onboarding_answers (
    user_id      uuid primary key,
    answers      jsonb not null default '{}'::jsonb,
    submitted_at timestamptz not null default now(),
    processed_at timestamptz
);

create table if not exists public.memories (
    id               uuid primary key default gen_random_uuid(),
    user_id          uuid not null,
    category         text not null,
    key              text not null,
    value            text not null,
    importance       real not null default 0.5 check (importance >= 0 and importance <= 1),
    source           text not null default 'tool',
    embedding        bytea,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    last_accessed_at timestamptz,
    access_count     integer not null default 0,
    constraint memories_user_category_key unique (user_id, category, key)
);
create index if not exists memories_user_updated on public.memories (user_id, updated_at desc);

create table if not exists public.memory_history (
    id         bigint generated always as identity primary key,
    memory_id  uuid not null references public.memories (id) on delete cascade,
    user_id    uuid not null,
    category   text not null,
    key        text not null,
    old_value  text not null,
    new_value  text not null,
    changed_at timestamptz not null
);
create index if not exists memory_history_lookup on public.memory_history (user_id, category, key, changed_at);

create table if not exists public.conversations (
    id           uuid primary key,
    user_id      uuid not null,
    started_at   timestamptz not null,
    ended_at     timestamptz,
    summary      text,
    open_threads jsonb not null default '[]'::jsonb
);
create index if not exists conversations_user_started on public.conversations (user_id, started_at desc);

-- No foreign key to conversations: messages arrive through the write batcher, possibly before the conversation row.
create table if not exists public.messages (
    id              uuid primary key,
    conversation_id uuid not null,
    user_id         uuid not null,
    role            text not null check (role in ('user', 'assistant', 'system')),
    content         text not null,
    created_at      timestamptz not null
);
create index if not exists messages_user_created on public.messages (user_id, created_at desc);
create index if not exists messages_conversation_created on public.messages (conversation_id, created_at);

-- The database keeps a memory's earlier values, so an update never silently loses one.
create or replace function public.companion_record_memory_change() returns trigger
language plpgsql as $$
begin
    if new.value is distinct from old.value then
        insert into public.memory_history (memory_id, user_id, category, key, old_value, new_value, changed_at)
        values (old.id, old.user_id, old.category, old.key, old.value, new.value, new.updated_at);
    end if;
    return new;
end
$$;

drop trigger if exists memories_record_change on public.memories;
create trigger memories_record_change
    after update of value on public.memories
    for each row execute function public.companion_record_memory_change();

-- created_at is the first write's time, whatever a later upsert sends (PostgREST's upsert sets every column sent).
create or replace function public.companion_keep_created_at() returns trigger
language plpgsql as $$
begin
    new.created_at := old.created_at;
    return new;
end
$$;

drop trigger if exists memories_keep_created_at on public.memories;
create trigger memories_keep_created_at
    before update on public.memories
    for each row execute function public.companion_keep_created_at();

drop trigger if exists profiles_keep_created_at on public.profiles;
create trigger profiles_keep_created_at
    before update on public.profiles
    for each row execute function public.companion_keep_created_at();

-- N access-time updates in one statement (PostgREST cannot increment a column in a PATCH).
-- p_accesses: [{"user_id": "...", "category": "...", "key": "...", "at": "<timestamptz>"}, ...]; a memory named
-- n times gains n accesses.
create or replace function public.companion_record_memory_access(p_accesses jsonb)
returns integer
language sql as $$
    with accesses as (
        select a.user_id, a.category, a.key, count(*)::integer as n, max(a.at) as at
          from jsonb_to_recordset(p_accesses) as a(user_id uuid, category text, key text, at timestamptz)
         group by a.user_id, a.category, a.key
    ), touched as (
        update public.memories m
           set access_count = m.access_count + accesses.n,
               last_accessed_at = greatest(coalesce(m.last_accessed_at, accesses.at), accesses.at)
          from accesses
         where m.user_id = accesses.user_id and m.category = accesses.category and m.key = accesses.key
        returning 1
    )
    select count(*)::integer from touched;
$$;

-- Everything of one user, in one transaction; returns the rows removed per table.
create or replace function public.companion_delete_user_data(p_user_id uuid)
returns jsonb
language plpgsql as $$
declare
    n_messages integer; n_conversations integer; n_history integer;
    n_memories integer; n_onboarding integer; n_profiles integer;
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
    return jsonb_build_object(
        'messages', n_messages, 'conversations', n_conversations, 'memory_history', n_history,
        'memories', n_memories, 'onboarding', n_onboarding, 'profiles', n_profiles);
end
$$;
