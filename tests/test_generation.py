"""Decoding honours max_new_tokens, EOS and stop strings; sampling is seeded."""



def test_max_new_tokens_and_eos(load, frames):
    engine = load(window_tokens=48, topk_frames=3, chunk_frames=4)
    session = engine.new_session()
    session.add_frames(frames(6))
    free = session.answer("what is on the table?", max_new_tokens=7, eos_token_ids=())
    assert len(free.token_ids) == 7
    # make the 4th greedy token the EOS: decoding stops right before it
    eos = free.token_ids[3]
    stop_at = free.token_ids.index(eos)
    cut = session.answer("what is on the table?", max_new_tokens=7, eos_token_ids=[eos])
    assert cut.token_ids == free.token_ids[:stop_at]
    assert session.ask("what is on the table?", max_new_tokens=7, eos_token_ids=()) == free.text


def test_stop_strings_and_sampling(load, frames):
    engine = load(window_tokens=48, topk_frames=3, chunk_frames=4)
    session = engine.new_session()
    session.add_frames(frames(6))
    full = session.ask("what is on the table?", max_new_tokens=8, eos_token_ids=())
    if len(full) > 2:
        stop = full[1:3]
        assert session.ask("what is on the table?", max_new_tokens=8, eos_token_ids=(), stop=[stop]) == full[: full.find(stop)]
    a = session.answer("what?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=3, eos_token_ids=())
    b = session.answer("what?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=3, eos_token_ids=())
    assert a.token_ids == b.token_ids
