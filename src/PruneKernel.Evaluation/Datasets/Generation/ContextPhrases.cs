namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>
/// The fixed wording the context writer draws from. Generic sentences name no object kind, colour, count or direction,
/// so they rarely collide with an answer; the writer still checks every sentence.
/// </summary>
internal static class ContextPhrases
{
    public static readonly string[] Generic =
    [
        "The picture is a flat illustration with no shading or texture.",
        "Every object is drawn as a single solid silhouette.",
        "The shapes have smooth, clean edges, as in vector clip art.",
        "There is plenty of empty space between the objects.",
        "Nothing in the picture overlaps anything else.",
        "The composition feels calm and uncluttered.",
        "The illustration looks like a page from a children's picture book.",
        "A design like this is often used to teach shapes and words.",
        "The objects seem to float, since there is no ground line or horizon.",
        "No text, labels or numbers are printed anywhere in the image.",
        "The lighting is even, with no shadows or highlights.",
        "Each object is easy to tell apart from its neighbours.",
        "The arrangement does not follow a strict grid.",
        "The spacing suggests the objects were placed independently.",
        "There is no border or frame around the picture.",
        "The style is deliberately minimal, which keeps attention on the forms.",
        "Such pictures work well as prompts for describing spatial layouts.",
        "The scene has no people, animals or vehicles in it.",
        "The contrast between the objects and the background is strong.",
        "The image is square and fairly small.",
        "The forms are simplified icons rather than realistic drawings.",
        "A viewer can take in the whole scene at a glance.",
        "The objects differ in size, which adds some visual rhythm.",
        "Because the background is plain, the silhouettes stand out clearly.",
        "The scene could serve as a simple memory game for children.",
        "There is no sense of depth or perspective in the drawing.",
        "All of the objects face the viewer directly.",
        "The outlines are crisp, without any blur or noise.",
        "The picture reads more like a diagram than a photograph.",
        "Some areas of the canvas are completely empty.",
        "The placement of the objects looks somewhat random.",
        "The drawing avoids gradients entirely.",
        "The overall impression is tidy and orderly.",
        "This kind of image is common in visual reasoning exercises.",
        "One could easily trace each object with a pencil.",
        "The shapes are instantly recognisable even at a small size.",
        "The visual weight is spread across the canvas.",
        "The picture has the look of a sticker sheet.",
        "The objects do not interact with each other in any obvious way.",
        "It is the kind of picture a teacher might show during a vocabulary lesson.",
        "The absence of detail makes the picture easy to describe.",
        "The edges of the canvas are free of clutter.",
        "The scene is static; nothing suggests motion.",
        "It resembles the icons found on a simple mobile app.",
        "The proportions of the objects look natural for icons.",
        "A careful observer would notice the varied sizes first.",
        "The image has a cheerful, playful character.",
        "The flat colours give the scene a graphic, poster-like quality.",
        "Describing such a scene precisely takes a little practice.",
        "The layout leaves room for the eye to rest.",
        "There are no repeating patterns in the background.",
        "The image compresses well because of its large uniform areas.",
        "The simplicity of the style hides no small details.",
        "Every object is fully inside the canvas.",
        "None of the objects is cut off by the edge of the image.",
        "The distances between objects vary from place to place.",
        "The drawing uses a limited palette of strong hues.",
        "The style recalls early computer graphics.",
        "The scene works as a quick test of attention to detail.",
        "The picture would also look fine printed in a small size.",
        "In short, it is a tidy collection of simple icons.",
        "The image does not tell a story; it simply shows objects.",
        "Symbols like these are meant to be understood without words.",
        "The objects are spread out rather than clustered in one spot.",
        "The canvas has a quiet, neutral tone.",
        "It is easy to imagine this picture on a classroom wall.",
        "The forms are bold and legible.",
        "The scene invites the viewer to compare sizes and positions.",
        "Nothing in the image looks damaged or unfinished.",
        "The drawing was probably produced by a computer program.",
        "Each icon keeps the same flat treatment.",
        "The picture contains a handful of distinct items.",
        "There is a pleasant balance between filled and empty areas.",
        "The illustration would suit a puzzle book.",
        "The icons vary in how much of the canvas they occupy.",
        "Overall the picture is clear, simple and easy to read.",
        "A quick sketch of this scene would take only a minute.",
        "The picture leaves little room for ambiguity about what is drawn.",
        "The work feels more functional than artistic.",
        "The clean look suggests the image was made for a test or a lesson.",
    ];

    public static readonly string[] Short =
    [
        "Indeed.", "Sure.", "Certainly.", "Noted.", "Of course.", "I agree.", "Good question.", "That makes sense.",
        "Absolutely.", "Fair enough.", "Interesting.", "Quite so.", "Exactly.", "Thanks.", "I see.", "Okay.",
    ];

    public static readonly (string Question, string Answer)[] GeneralQa =
    [
        ("What kind of picture is this?", "It is a simple flat illustration of a few objects on a plain light background."),
        ("Is the background plain?", "The background is plain and light, without any texture or pattern."),
        ("What is the mood of the picture?", "The mood is calm and friendly, like a page from a picture book."),
        ("Does the picture look like a photograph?", "It looks like a computer drawing, not a photograph."),
        ("Are there any people in the image?", "The picture shows only objects; there are no people."),
        ("Is any text written in the image?", "There is no text anywhere in the picture."),
        ("How would you describe the style?", "The style is flat and minimal, with solid fills and sharp edges."),
        ("Do the objects overlap?", "The objects are separated from each other and do not overlap."),
        ("Is there a horizon or ground?", "There is neither a horizon nor a ground line; the objects float on the background."),
        ("Are the objects outlined?", "The objects have no outlines; each is a single solid fill."),
    ];

    public static readonly string[] ReasoningQuestions =
    [
        "What could this picture be used for?",
        "How do the objects relate to each other?",
        "What makes this image easy or hard to describe?",
        "Why would someone create a picture like this?",
        "What does the layout suggest about how it was made?",
        "How might a child react to this picture?",
        "What could a teacher ask about this image?",
    ];

    public static readonly string[] StyleQuestions =
    [
        "Tell me more about the style of the drawing.",
        "What do you notice about the composition?",
        "How is the space in the picture used?",
        "What else stands out in this image?",
        "Could you comment on the overall look?",
        "What impression does the picture leave?",
    ];

    public static readonly string[] DescribeRequests =
    [
        "Describe the image in detail.",
        "Can you give a thorough description of this picture?",
        "Please describe what you see.",
        "Write a detailed description of the scene.",
        "What does the picture show?",
    ];

    public static readonly string[] BackgroundSentences =
    [
        "The background is a plain, very light tone, almost white.",
        "The canvas is a pale off-white with no pattern.",
        "A flat, light background fills the whole image.",
        "The objects sit on a clean, light backdrop.",
    ];
}
