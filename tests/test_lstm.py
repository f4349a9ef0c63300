"""The LSTM language model with tuned regularisers, and the PTB study (Table 4, Fig. 8), on a
tiny generated corpus."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.func import functional_call

from optuna_ift.cli import main
from optuna_ift.experiments import LSTMLanguageModel, lm_train_loss, lm_val_loss, lstm, lstm_overfit
from optuna_ift.experiments import REGULARIZERS
from optuna_ift.hypergrad import Exact, hypergradient
from optuna_ift.hyperparams import split_parameters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DT = torch.float64


def tokens(n: int, vocab: int, *, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, n, generator=torch.Generator().manual_seed(seed))


def write_markov_corpus(root, *, vocab: int = 30, sizes=(4000, 800, 800), seed: int = 0):
    """Text from a random sparse Markov chain over ``vocab`` words, one sentence per line."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 3), generator=g)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "valid", "test"), sizes):
        word, lines, line = 0, [], []
        for _ in range(n):
            word = int(nxt[word, torch.randint(0, 3, (1,), generator=g)])
            line.append(f"w{word}")
            if len(line) == 12:
                lines.append(" ".join(line))
                line = []
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


# --- the model -------------------------------------------------------------------------------


def test_seven_or_many_hyperparameters():
    vocab, hidden, layers = 11, 4, 3
    seven = LSTMLanguageModel(vocab, hidden_size=hidden, num_layers=layers)
    _, hyper = split_parameters(seven)
    assert len(hyper) == 7 and all(h.numel() == 1 for h in hyper)
    assert set(seven.regularizers()) == set(REGULARIZERS)
    many = LSTMLanguageModel(vocab, hidden_size=hidden, num_layers=layers, hyperparameters="many")
    _, hyper = split_parameters(many)
    # A rate per word, per input / output unit, per unit of each of the 2 layer boundaries,
    # per hidden-to-hidden weight of each of the 3 layers, plus AR and TAR.
    expected = vocab + hidden + (layers - 1) * hidden + hidden + layers * 4 * hidden * hidden + 2
    assert sum(h.numel() for h in hyper) == expected == 221
    sizes = {name: v.numel() for name, v in many.regularizers().items()}
    assert sizes == {"embedding": vocab, "input": hidden, "hidden": 2 * hidden,
                     "output": hidden, "weight": 3 * 4 * hidden * hidden, "ar": 1, "tar": 1}
    plain = LSTMLanguageModel(vocab, hidden_size=hidden, hyperparameters="none")
    assert split_parameters(plain)[1] == [] and plain.regularizers() == {}
    # Tied embedding: the only vocabulary-sized weights are the embedding and output bias.
    weights, _ = split_parameters(seven)
    assert sum(w.numel() for w in weights if vocab in w.shape) == vocab * hidden + vocab


def test_init_sets_each_regulariser():
    init = {"embedding": 0.05, "input": 0.2, "hidden": 0.3, "output": 0.4, "weight": 0.5,
            "ar": 2.0, "tar": 1.0}
    for variant in ("7", "many"):
        values = LSTMLanguageModel(7, hidden_size=3, hyperparameters=variant,
                                   init=init).regularizers()
        for name, value in init.items():
            torch.testing.assert_close(values[name].double(),
                                       torch.full_like(values[name], value).double())


def test_training_and_evaluation_modes_differ_as_they_should():
    torch.manual_seed(0)
    model = LSTMLanguageModel(13, hidden_size=6, num_layers=2, generator=torch.Generator(),
                              init={name: 0.4 for name in ("embedding", "input", "hidden",
                                                           "output", "weight")})
    x = tokens((3, 5), 13, seed=1)
    model.eval()
    first = model(x)
    assert first.shape == (3, 5, 13) and model.penalty is None
    torch.testing.assert_close(model(x), first)  # no dropout: deterministic
    with torch.no_grad():
        for modules in model.dropout_modules().values():
            for m in modules:
                m.logit.fill_(2.0)  # rates no longer matter at evaluation
    torch.testing.assert_close(model(x), first)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # fresh masks each pass
    assert model.penalty is not None and float(model.penalty.detach()) > 0
    # With every rate near zero, training mode computes the evaluation function.
    with torch.no_grad():
        for modules in model.dropout_modules().values():
            for m in modules:
                m.logit.fill_(-30.0)
    torch.testing.assert_close(model(x), first, atol=1e-5, rtol=1e-5)


def test_each_dropout_acts_where_it_should():
    torch.manual_seed(0)
    x = tokens((4, 6), 9, seed=2)
    model = LSTMLanguageModel(9, hidden_size=5, num_layers=2, generator=torch.Generator())
    model.eval()
    reference = model(x)
    model.train()
    for name, modules in model.dropout_modules().items():
        with torch.no_grad():  # only this regulariser's rate is high
            for other in model.dropout_modules().values():
                for m in other:
                    m.logit.fill_(-30.0)
            for m in modules:
                m.logit.fill_(0.0)
        assert not torch.allclose(model(x), reference, atol=1e-4), name


def test_model_errors():
    with pytest.raises(ValueError, match="hyperparameters"):
        LSTMLanguageModel(10, hyperparameters="all")
    with pytest.raises(ValueError, match="unknown names"):
        LSTMLanguageModel(10, init={"dropout": 0.1})
    with pytest.raises(ValueError, match="ar"):
        LSTMLanguageModel(10, init={"ar": 0.0})
    with pytest.raises(ValueError, match="init"):
        LSTMLanguageModel(10, init={"input": 1.0})
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMLanguageModel(10, hidden_size=0)
    with pytest.raises(ValueError, match="tokens"):
        LSTMLanguageModel(10, hidden_size=2)(torch.zeros(2, 3))


# --- hypergradients against finite differences -------------------------------------------------


class FixedNoiseProblem:
    """A tiny LSTM LM whose dropout masks are drawn from a re-seeded generator, so the training
    loss is a smooth deterministic function of weights and the 7 hyperparameters; a small L2
    term makes its minimum strict. Newton's method (exact Hessian) re-solves it precisely."""

    def __init__(self, variant: str = "7") -> None:
        vocab, self.t = 5, 3
        self.vocab = vocab
        self.train = (tokens((4, 3), vocab, seed=0), tokens((4, 3), vocab, seed=1))
        self.val = (tokens((4, 3), vocab, seed=2), tokens((4, 3), vocab, seed=3))
        self.noise = torch.Generator()
        torch.manual_seed(0)
        self.model = LSTMLanguageModel(
            vocab, hidden_size=2, num_layers=2, hyperparameters=variant, temperature=0.5,
            init={name: 0.3 for name in ("embedding", "input", "hidden", "output", "weight")},
            generator=self.noise).to(DT)
        with torch.no_grad():
            self.model.embedding.mul_(10)  # away from the symmetric point w = 0
        self.weights, self.hyper = split_parameters(self.model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.names = [names[id(w)] for w in self.weights]
        self.shapes = [w.shape for w in self.weights]
        self.sizes = [w.numel() for w in self.weights]

    def train_loss(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        self.noise.manual_seed(1)
        self.model.train()
        if flat is None:
            return lm_train_loss(self.model, self.train) + 1e-3 * sum(
                (w**2).sum() for w in self.weights)
        params = {n: t.reshape(s) for n, t, s in zip(self.names, flat.split(self.sizes),
                                                     self.shapes)}
        logits = functional_call(self.model, params, (self.train[0],))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab),
                                                 self.train[1].reshape(-1))
        return loss + self.model.penalty + 1e-3 * (flat**2).sum()

    def val_loss(self) -> torch.Tensor:
        self.model.eval()
        try:
            return lm_val_loss(self.model, self.val)
        finally:
            self.model.train()

    def solve(self, *, lbfgs: bool) -> float:
        """Minimise the training loss in the weights; returns the Hessian's least eigenvalue."""
        if lbfgs:
            opt = torch.optim.LBFGS(self.weights, lr=1, max_iter=500, tolerance_grad=1e-10,
                                    tolerance_change=1e-14, history_size=50,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = self.train_loss()
                loss.backward(inputs=self.weights)
                return loss

            opt.step(closure)
        for _ in range(6):
            flat = torch.cat([w.detach().flatten() for w in self.weights])
            grad = torch.func.grad(self.train_loss)(flat)
            hess = torch.autograd.functional.hessian(self.train_loss, flat)
            if float(grad.norm()) < 1e-12:
                break
            with torch.no_grad():
                new = flat - torch.linalg.solve(hess, grad)
                for w, part in zip(self.weights, new.split(self.sizes)):
                    w.copy_(part.reshape(w.shape))
        return float(torch.linalg.eigvalsh(hess).min())


@pytest.fixture(scope="module")
def fixed_noise():
    problem = FixedNoiseProblem()
    assert problem.solve(lbfgs=True) > 0  # a strict local minimum
    return problem


def test_each_of_the_seven_hypergradients_matches_finite_differences(fixed_noise):
    p = fixed_noise
    start = [w.detach().clone() for w in p.weights]
    grads = hypergradient(p.val_loss(), p.train_loss(), p.weights, p.hyper, solver=Exact())
    names = REGULARIZERS
    assert [h.numel() for h in p.hyper] == [1] * 7
    eps = 1e-5
    for name, h, g in zip(names, p.hyper, grads):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for w, w0 in zip(p.weights, start):
                    w.copy_(w0)
                h.add_(sign * eps)
            p.solve(lbfgs=False)
            values.append(float(p.val_loss().detach()))
            with torch.no_grad():
                h.sub_(sign * eps)
        fd = (values[0] - values[1]) / (2 * eps)
        assert math.isfinite(float(g)) and float(g) != 0, name
        assert math.copysign(1, float(g)) == math.copysign(1, fd), name
        assert float(g) == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    with torch.no_grad():
        for w, w0 in zip(p.weights, start):
            w.copy_(w0)


def test_many_variant_hypergradient_is_finite_and_reaches_every_group():
    p = FixedNoiseProblem("many")
    p.solve(lbfgs=True)
    grads = hypergradient(p.val_loss(), p.train_loss(), p.weights, p.hyper, solver=Exact())
    assert [g.shape for g in grads] == [h.shape for h in p.hyper]
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().max() > 0
    # Most individual rates get a non-zero hypergradient (a word absent from the training
    # batch's inputs cannot).
    total = sum(g.numel() for g in grads)
    assert sum(int((g != 0).sum()) for g in grads) > 0.8 * total


# --- the study -------------------------------------------------------------------------------

TINY = dict(hidden_size=8, num_layers=2, seq_len=6, batch_size=8, epochs=5.0,
            max_train_tokens=None, lr=2e-2, hyper_lr=0.05, inner_steps=5, neumann_steps=2,
            evaluations=3, show_progress=False)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    return write_markov_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def study(corpus_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lstm")
    return lstm(data_root=corpus_root, out=out, device="cpu", **TINY), out


def corpus_words(root):
    return (root / "train.txt").read_text().split()


def test_study_writes_table_four_and_figures(study, corpus_root):
    results, out = study
    table = results["table"]
    assert list(table) == ["none", "ift-7", "ift-many", "tpe"]
    assert table["none"]["hyperparameters"] == 0
    assert table["ift-7"]["hyperparameters"] == table["tpe"]["hyperparameters"] == 7
    vocab = results["config"]["vocab_size"]
    assert vocab == len(set(corpus_words(corpus_root))) + 1  # the words and <eos>
    assert table["ift-many"]["hyperparameters"] == vocab + 8 + 8 + 8 + 2 * 4 * 8 * 8 + 2
    tokens_seen = {table[m]["train_tokens"] for m in ("none", "ift-7", "ift-many")}
    assert tokens_seen == {results["config"]["train_tokens"]}
    for method, row in table.items():
        assert 1 < row["val_ppl"] and 1 < row["test_ppl"], method
        assert row["seconds"] > 0 and row["curve"], method
        if method != "tpe":  # TPE's trials draw rates up to 0.8 and may train worse
            # Learned something: far better than guessing among the words.
            assert row["val_ppl"] < vocab / 2 and row["test_ppl"] < vocab / 2, method
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"]["ift-7"]["val_ppl"] == pytest.approx(table["ift-7"]["val_ppl"])
    for name in ("lstm_val_ppl.png", "lstm_rates.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_study_tunes_the_rates_and_tpe_keeps_to_its_budget(study):
    results, _ = study
    table, learned = results["table"], results["learned"]
    init = results["config"]["init"]
    seven = learned["ift-7"]
    assert set(seven[0]) >= set(REGULARIZERS)
    assert seven[0]["input"] == pytest.approx(init["input"], rel=1e-5)
    moved = [abs(seven[-1][n] - seven[0][n]) for n in REGULARIZERS]
    assert all(m > 0 for m in moved)
    many = learned["ift-many"][-1]["weight"]
    assert many["q10"] < many["q90"]  # per-weight rates spread apart
    assert table["ift-7"]["skipped"] == 0 and table["ift-many"]["skipped"] == 0
    tpe = table["tpe"]
    assert tpe["n_trials"] >= 1 and len(tpe["trials"]) == tpe["n_trials"]
    assert tpe["val_ppl"] == min(t["val_ppl"] for t in tpe["trials"])
    # TPE stops starting trials at IFT-7's wall-clock time; the last one is cut off there.
    assert sum(t["seconds"] for t in tpe["trials"][:-1]) <= table["ift-7"]["seconds"]
    for trial in tpe["trials"]:
        assert set(trial["params"]) == set(REGULARIZERS)


def test_many_from_seven_starts_where_ift_7_ended(corpus_root):
    results = lstm(data_root=corpus_root, out=None, device="cpu",
                   methods=["ift-many-from-7", "ift-7"], **TINY)
    table, learned = results["table"], results["learned"]
    assert list(table) == ["ift-7", "ift-many-from-7"]
    start, seven = learned["ift-many-from-7"][0], table["ift-7"]["final"]
    assert seven != results["config"]["init"]
    for name in REGULARIZERS:
        value = start[name]
        if isinstance(value, dict):  # many: every entry starts at the learned value
            assert value["q10"] == pytest.approx(seven[name], rel=1e-5)
            assert value["q90"] == pytest.approx(seven[name], rel=1e-5)
        else:
            assert value == pytest.approx(seven[name], rel=1e-5)
    assert table["ift-many-from-7"]["hyperparameters"] > 7
    assert table["ift-many-from-7"]["val_ppl"] < results["config"]["vocab_size"] / 2
    with pytest.raises(ValueError, match="'ift-many-from-7' starts from the values 'ift-7'"):
        lstm(data_root=corpus_root, out=None, methods=["ift-many-from-7"])


def test_study_arguments_are_checked(corpus_root):
    with pytest.raises(ValueError, match="methods"):
        lstm(data_root=corpus_root, out=None, methods=["tpe"])
    with pytest.raises(ValueError, match="methods"):
        lstm(data_root=corpus_root, out=None, methods=["grid"])
    with pytest.raises(ValueError, match="optimizer"):
        lstm(data_root=corpus_root, out=None, optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        lstm(data_root=corpus_root, out=None, epochs=0)
    with pytest.raises(FileNotFoundError, match="train.txt"):
        lstm(data_root=corpus_root / "nowhere", out=None)


def test_overfit_drives_validation_loss_down(corpus_root, tmp_path):
    results = lstm_overfit(data_root=corpus_root, out=tmp_path, n_sequences=4, hidden_size=8,
                           seq_len=6, hyper_steps=60, inner_steps=5, neumann_steps=2,
                           lr=1e-2, hyper_lr=0.1, init_decay=1e-2, device="cpu",
                           show_progress=False)
    assert results["hyperparameters"] == results["weights"]
    assert len(results["val_loss"]) == 60 and results["skipped"] == 0
    # The decays pull the validation loss of the 4 held-out sequences well below its start.
    assert results["final_val_loss"] < 0.9 * results["start_val_loss"]
    assert results["ratio"] == pytest.approx(results["final_val_loss"]
                                             / results["start_val_loss"])
    assert (tmp_path / "lstm_overfit.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_runs_the_study(corpus_root, tmp_path, capsys):
    code = main(["lstm", "--data-root", str(corpus_root), "--out", str(tmp_path),
                 "--methods", "none", "ift-7", "--hidden-size", "6", "--seq-len", "5",
                 "--batch-size", "8", "--epochs", "0.5", "--inner-steps", "4",
                 "--neumann-steps", "1", "--evaluations", "2", "--device", "cpu",
                 "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.split("\nresults")[0])
    assert set(summary) >= {"none_val_ppl", "ift-7_val_ppl", "ift-7_test_ppl"}
    assert json.loads((tmp_path / "results.json").read_text())["config"]["hidden_size"] == 6
