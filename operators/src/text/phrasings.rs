//! Question and answer phrasings of the instruction tasks, in English and Chinese (the Lyrics code trains on
//! both). `{phrase}`, `{box}`, `{tag}`, `{count}` and `{boxes}` are filled in; one is chosen per conversation by a
//! seed derived from the sample key, so reruns write the same text.

pub const REC_EN: [&str; 12] = [
    "Where is the {phrase} in the image? Answer with a bounding box.",
    "Give the bounding box of the {phrase}.",
    "Locate the {phrase} and output its coordinates.",
    "Find the {phrase}. Reply with [x1, y1, x2, y2].",
    "Which region contains the {phrase}?",
    "Please ground \"{phrase}\" in the image.",
    "Output the box around the {phrase}.",
    "Where can I find the {phrase}? Give normalized coordinates.",
    "Point out the {phrase} with a bounding box.",
    "Detect the {phrase} and return its box.",
    "What are the coordinates of the {phrase}?",
    "Mark the {phrase} in this picture with a box.",
];
pub const REC_ZH: [&str; 11] = [
    "图中的{phrase}在哪里？请用边界框回答。",
    "请给出{phrase}的边界框。",
    "定位图中的{phrase}并输出坐标。",
    "找到{phrase}，用[x1, y1, x2, y2]回答。",
    "哪个区域包含{phrase}？",
    "请在图中标出“{phrase}”。",
    "输出{phrase}的框。",
    "{phrase}在图像的什么位置？请给出归一化坐标。",
    "用边界框指出{phrase}。",
    "检测{phrase}并返回它的框。",
    "{phrase}的坐标是多少？",
];
pub const REGION_EN: [&str; 11] = [
    "What is in the region {box}?",
    "Describe the object at {box}.",
    "What does the box {box} contain?",
    "Name the object inside {box}.",
    "Tell me what is located at {box}.",
    "Give a short description of the region {box}.",
    "What can you see in {box}?",
    "Identify the thing in the area {box}.",
    "Which object occupies {box}?",
    "Caption the region {box}.",
    "What is shown within {box}?",
];
pub const REGION_ZH: [&str; 10] = [
    "区域{box}里有什么？",
    "描述位于{box}的物体。",
    "框{box}中包含什么？",
    "说出{box}内的物体名称。",
    "告诉我{box}处是什么。",
    "简要描述区域{box}。",
    "你在{box}中看到了什么？",
    "识别区域{box}中的东西。",
    "哪个物体占据了{box}？",
    "为区域{box}写一句描述。",
];
pub const GROUNDED_EN: [&str; 10] = [
    "Describe the image and give boxes for the objects you mention.",
    "Write a caption with the location of each object it names.",
    "Describe this picture, grounding every object with a bounding box.",
    "Give a grounded description of the image.",
    "Caption the image and mark the mentioned objects with boxes.",
    "What is happening in the image? Include bounding boxes for the objects.",
    "Provide a description where each object is followed by its coordinates.",
    "Describe the scene with coordinates for the things you mention.",
    "Summarize the image, annotating objects with their boxes.",
    "Explain what the image shows and where each object is.",
];
pub const GROUNDED_ZH: [&str; 10] = [
    "描述这张图片，并给出你提到的物体的边界框。",
    "写一句图片描述，并标出其中每个物体的位置。",
    "描述这幅图，为每个物体加上边界框。",
    "给出这张图片的带定位的描述。",
    "为图片写描述，并用框标出提到的物体。",
    "图中发生了什么？请给出物体的边界框。",
    "请描述图片，每个物体后面跟上它的坐标。",
    "描述场景，并给出所提物体的坐标。",
    "概括这张图片，并标注物体的框。",
    "说明图片内容以及每个物体的位置。",
];
pub const TAGS_EN: [&str; 10] = [
    "List the objects in the image.",
    "What objects can you see?",
    "Give the tags of this image.",
    "Which things appear in the picture?",
    "Name everything visible in the image.",
    "Enumerate the objects present.",
    "What is in this image? Answer with a list of tags.",
    "Tag this image.",
    "Provide a list of the objects shown.",
    "What categories of objects does the image contain?",
];
pub const TAGS_ZH: [&str; 10] = [
    "列出图中的物体。",
    "你能看到哪些物体？",
    "给出这张图片的标签。",
    "图中出现了哪些东西？",
    "说出图中所有可见的东西。",
    "列举图中存在的物体。",
    "这张图里有什么？请用标签列表回答。",
    "为这张图片打标签。",
    "给出图中物体的列表。",
    "图中包含哪些类别的物体？",
];
pub const COUNT_EN: [&str; 10] = [
    "How many instances of {tag} are there?",
    "Count the {tag} objects in the image.",
    "How many {tag} objects can you see?",
    "What is the number of {tag} objects here?",
    "Count every {tag} and give their boxes.",
    "How many times does {tag} appear in the image?",
    "Tell me how many {tag} objects are visible.",
    "Give the count of {tag} objects, with their locations.",
    "How many {tag} objects does the picture show?",
    "Count the occurrences of {tag}.",
];
pub const COUNT_ZH: [&str; 10] = [
    "图中有多少个{tag}？",
    "数一数图中的{tag}。",
    "你能看到几个{tag}？",
    "这里{tag}的数量是多少？",
    "数出所有{tag}并给出它们的框。",
    "{tag}在图中出现了几次？",
    "告诉我可见的{tag}有多少个。",
    "给出{tag}的数量和位置。",
    "这张图片中有多少{tag}？",
    "统计{tag}出现的次数。",
];
pub const COUNT_ANSWER_EN: &str = "There {verb} {count}: {boxes}.";
pub const COUNT_ANSWER_ZH: &str = "共有{count}个：{boxes}。";
