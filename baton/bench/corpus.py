"""A small built-in English corpus for benchmark prompts (written for this project; no download).

Paragraphs on everyday and technical subjects, so a prompt cut from them reads like real text and
tokenises like it (ordinary words, punctuation, numbers), unlike random token ids.
"""

from __future__ import annotations

import re

PARAGRAPHS: tuple[str, ...] = (
    "The village sat at the bend of a slow river, where the water widened into a shallow pool before "
    "turning east toward the hills. In summer the children waded across it to reach the orchard on the "
    "far bank, and in winter the pool froze hard enough for the old men to cut holes and fish through "
    "the ice. Nobody remembered who had planted the orchard, but everyone agreed that its apples were "
    "the best in the valley.",
    "A good recipe for bread needs only four things: flour, water, salt and yeast. The rest is patience. "
    "Mix the flour and water and let them rest for half an hour, then add the salt and the yeast and knead "
    "the dough until it is smooth and springs back when pressed. Leave it covered in a warm place until it "
    "has doubled in size, shape it gently, and bake it in a very hot oven with a tray of water underneath.",
    "When the first railways crossed the plains, towns grew up wherever the trains stopped for water. "
    "Some of those towns are cities now, with universities and airports and traffic jams. Others "
    "disappeared as soon as the engines no longer needed to stop, and all that remains of them is a "
    "name on an old map and perhaps a few foundations hidden in the tall grass.",
    "Memory in a computer is organised as a hierarchy. Registers are the fastest and the smallest, then "
    "come several levels of cache, then main memory, and finally storage that keeps its contents when "
    "the power is off. A program that touches memory in a predictable order lets the hardware fetch data "
    "before it is needed, while a program that jumps around at random spends most of its time waiting.",
    "The committee met every Thursday at four o'clock in the small room above the library. There were "
    "seven members, but rarely more than five of them came, and the meetings always began with a long "
    "discussion of the minutes of the previous week. By the time they reached the first real item on "
    "the agenda, it was usually time to go home.",
    "Bees communicate the location of food with a dance. A forager returning to the hive walks in a "
    "figure of eight, waggling its body along the straight middle section. The angle of that section "
    "relative to vertical tells the other bees the direction of the flowers relative to the sun, and "
    "the length of the waggle tells them how far away the flowers are.",
    "She had always wanted to see the ocean, and when she finally did, at the age of forty-two, she "
    "stood on the beach for a long time without saying anything. The waves were grey and loud and the "
    "wind was cold, nothing like the pictures she had kept on her kitchen wall, and yet she felt that "
    "she had come home to a place she had never been.",
    "A language model predicts the next token of a text from the tokens before it. During generation "
    "it runs once over the whole prompt, which is called the prefill, and then once for every new "
    "token, which is called decoding. The prefill is limited by arithmetic, because many tokens are "
    "processed together, while decoding is usually limited by how fast the weights can be read.",
    "The museum's oldest exhibit is a wooden boat found in a peat bog about eighty years ago. It is "
    "almost nine metres long and was carved from a single oak trunk. The peat kept out the air, so the "
    "wood did not rot, and even the marks of the tools used to shape it are still visible if you look "
    "closely under the lights.",
    "To repair a puncture, first remove the wheel and take the tyre off the rim with two levers. Pull "
    "out the inner tube and pump a little air into it so that you can hear or feel where it escapes. "
    "Mark the hole, roughen the rubber around it with sandpaper, spread a thin layer of glue, wait until "
    "the glue is dry to the touch, and press the patch firmly into place.",
    "Every spring the town held a market in the main square. Farmers brought cheese, honey and early "
    "vegetables; craftsmen sold baskets, knives and pottery; and a man with a barrel organ played the "
    "same three tunes from morning until evening. The market lasted only a single day, but people "
    "talked about it for weeks afterwards.",
    "The number of ways to arrange ten different books on a shelf is ten factorial, which is a little "
    "more than three and a half million. If you could try one arrangement every second without stopping "
    "to sleep or eat, it would take you about forty-two days to try them all. With twenty books the same "
    "task would take longer than the age of the universe.",
    "The lighthouse keeper wrote in his log twice a day: the weather, the state of the sea, the ships "
    "that passed and anything unusual he had noticed. Most entries were short and repetitive. But in "
    "the autumn of that year the entries grew longer, and the handwriting became less steady, as if he "
    "were writing in a hurry or by a poor light.",
    "A queue is fair when the first to arrive is the first to be served, but fairness is not always "
    "efficient. A short job that arrives just after a long one may wait far longer than it takes to run. "
    "Schedulers therefore often mix several rules, letting short jobs overtake long ones up to a point, "
    "so that no job waits for ever and most jobs finish quickly.",
    "The old road over the pass was built for carts, not cars, and it climbs in tight bends that a bus "
    "can only take by reversing halfway round. In good weather the drive takes an hour and the views "
    "are magnificent. In bad weather the road is closed, and the only way across the mountains is the "
    "long tunnel forty kilometres to the south.",
    "Tea was first drunk as a medicine, then as a luxury, and only much later as an everyday drink. "
    "Ships raced each other to bring the new season's leaves to market, because the first cargo "
    "fetched the highest price. Some of those ships were the fastest sailing vessels ever built, and "
    "one of them can still be visited in a dry dock by the river.",
    "The experiment was simple. Two groups of plants were grown in identical pots with the same soil "
    "and the same amount of water. One group was placed by a window and the other in a cupboard with a "
    "small lamp. After three weeks the plants by the window were shorter but greener and stronger, while "
    "those in the cupboard had grown tall, pale and thin.",
    "Good documentation answers three questions: what a thing does, how to use it, and what to do when "
    "it goes wrong. It is written for a reader who is in a hurry and has a particular problem, not for "
    "someone who wants to read it from beginning to end. Examples help more than long explanations, "
    "and an example that can be copied and run helps most of all.",
    "In the north of the country the winters are long and dark, and for several weeks around the "
    "solstice the sun does not rise at all. People light candles in their windows and visit each other "
    "often. When the light finally returns in January, there is a festival, and everyone climbs the hill "
    "behind the town to watch the first sunrise of the year.",
    "A bridge must carry its own weight, the weight of the traffic that crosses it, and the force of the "
    "wind and sometimes of earthquakes. Engineers design it so that each part is strong enough with a "
    "comfortable margin, then check the whole structure for the ways it might vibrate. A bridge that is "
    "strong enough can still fail if the wind makes it swing at the wrong frequency.",
    "The cat arrived one evening in October and simply refused to leave. It was thin and grey, with a "
    "torn ear and very green eyes. The family put out a saucer of milk, which was a mistake, because "
    "from then on the cat regarded the house as its own. Within a month it was sleeping on the best "
    "chair and nobody could remember a time before it came.",
    "Compression works by finding patterns. A text in which the same words appear again and again can "
    "be stored in far fewer bits than its length suggests, because each repetition can be replaced by "
    "a short reference to the first occurrence. Random data, on the other hand, has no patterns to find, "
    "and no method can make it smaller on average.",
    "The orchestra tuned for several minutes before the conductor appeared. Then the hall went quiet, "
    "the conductor raised both hands, and the first notes of the symphony rose softly from the cellos. "
    "Halfway through the second movement a phone rang somewhere in the balcony, and three hundred "
    "people turned around at once to look for the culprit.",
    "Rain gauges are among the simplest scientific instruments. A funnel collects the rain and leads it "
    "into a narrow tube marked in millimetres, so that even a light shower can be measured accurately. "
    "Records from thousands of gauges, some kept for more than a century, show how the climate of each "
    "region has changed over time.",
    "He learned to play chess from his grandmother, who beat him every game for three years without "
    "ever letting him win. When he finally won, she shook his hand, put the pieces back in the box and "
    "said that she would not play him again, because now he knew how. He did not understand what she "
    "meant until many years later.",
    "A map is always a simplification. It shows some things and leaves out others, and the choice "
    "depends on what the map is for. A map for sailors shows the depth of the water and the position "
    "of lights and rocks, but hardly anything on land; a map for walkers shows paths, hills and streams, "
    "and treats the sea as a flat blue area at the edge.",
    "The factory had run day and night for sixty years, making buttons, buckles and hooks for coats. When "
    "it closed, the machines were sold and the building stood empty for a long time. Now it holds a "
    "bakery, two small offices, a climbing wall and a school for circus performers, and on some evenings "
    "the old loading yard becomes an open-air cinema.",
    "Sorting a list of numbers is one of the oldest problems in computing. The simplest methods compare "
    "every pair of items and take time proportional to the square of the list's length. Better methods "
    "divide the list into parts, sort the parts and merge the results, which takes time proportional to "
    "the length multiplied by its logarithm.",
    "On the morning of the race the fog was so thick that the starter could not see the far end of the "
    "line. The runners set off anyway, following the painted arrows on the road, and for the first few "
    "kilometres each of them ran alone in a small grey world. By the time the sun broke through, the "
    "leaders were already climbing the long hill before the finish.",
    "The garden was designed to be at its best in late summer, when most gardens are tired. Tall grasses "
    "moved in the wind among clumps of purple and yellow flowers, and a narrow path wound between them "
    "so that visitors could never see the whole garden at once. Around every bend there was something "
    "new to look at.",
    "A thermostat keeps a room at a steady temperature by switching the heating on when the room is "
    "too cold and off when it is warm enough. If it switched at exactly one temperature, the heating "
    "would flicker on and off many times a minute, so there is a small gap between the two thresholds. "
    "The room's temperature then rises and falls gently within that gap.",
    "The letter had been posted in 1957 and delivered in 2003, forty-six years late. Nobody could "
    "explain where it had been. The woman it was addressed to had died long before, but her son opened "
    "it and found a short note from a cousin in Canada inviting her to visit, together with a photograph "
    "of a house by a lake.",
    "Volcanoes are not only destructive. The ash they throw out weathers into some of the most fertile "
    "soils on Earth, and for this reason farmers have lived on the slopes of active volcanoes for "
    "thousands of years, accepting the risk of an eruption in exchange for rich harvests. Modern "
    "monitoring gives them more warning than their ancestors ever had.",
    "The software worked perfectly on the developer's laptop and failed on the server. After two days "
    "of searching, the cause turned out to be a single setting: the server's clock was set to a "
    "different time zone, so a file written at midnight appeared to come from the previous day and "
    "was silently ignored by the nightly job.",
    "Snow falls as crystals with six arms, because of the way water molecules fit together as they "
    "freeze. The exact shape of each crystal depends on the temperature and humidity of the air it "
    "falls through, and since no two crystals take exactly the same path, it is often said that no two "
    "are alike, though nobody has ever checked.",
    "The bookshop had no sign outside and no catalogue inside. The owner knew where every book was, and "
    "if you told him what you liked, he would disappear among the shelves and come back with three or "
    "four volumes you had never heard of. Customers rarely left with the book they had come for, and "
    "almost never left empty-handed.",
    "Clocks on satellites run at a slightly different rate from clocks on the ground, partly because "
    "they move fast and partly because gravity is weaker where they are. The difference is only a few "
    "millionths of a second per day, but navigation systems would drift by several kilometres a day if "
    "the engineers did not correct for it.",
    "The children built a raft from old barrels and planks and launched it on the pond behind the farm. "
    "It floated, which surprised everyone, and for a whole afternoon they paddled it from one bank to "
    "the other, pretending to be explorers on an unknown river. In the evening it sank quietly at its "
    "mooring, and nobody was sorry, because it had done what it was built for.",
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences() -> list[str]:
    """Every sentence of the corpus, in order."""
    return [s for p in PARAGRAPHS for s in _SENTENCE.split(p) if s]
